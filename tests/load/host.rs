//! A simulated host, as its agent would report it: hundreds of processes with command lines,
//! hashes, cgroups and ancestry, listeners and connections, then small deltas. Shared by the load
//! generator (`hostwatch-load`) and the store filler (`hostwatch-fill`); deterministic by the
//! host's index, so that runs compare.

use std::net::{IpAddr, Ipv4Addr};

use hostwatch_proto::v1 as proto;
use time::OffsetDateTime;

/// How large a simulated host is.
#[derive(Debug, Clone, Copy)]
pub struct Shape {
    pub processes: usize,
    pub listeners: usize,
    pub connections: usize,
    /// Connections to a fleet's mix of peers (internal 10/8 and 172.16/12, and public
    /// addresses) rather than the load generator's one internal /16.
    pub mixed_remotes: bool,
}

impl Shape {
    /// The load generator's host (its figures were measured with it): `processes`, 6 listeners,
    /// 30 connections.
    pub fn load(processes: usize) -> Shape {
        Shape { processes, listeners: 6, connections: 30, mixed_remotes: false }
    }
}

/// A small deterministic generator (xorshift64*): jitter and synthetic hosts without a crate.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1)
    }
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
}

/// A simulated host: what its agent reports.
pub struct Host {
    pub index: usize,
    pub rng: Rng,
    next_pid: u32,
    pub processes: Vec<proto::Process>,
    pub listeners: Vec<proto::Listener>,
    pub connections: Vec<proto::Connection>,
    booted: OffsetDateTime,
    mixed_remotes: bool,
}

const PROGRAMS: &[(&str, &str, &str)] = &[
    ("nginx", "/usr/sbin/nginx", "nginx.service"),
    ("python3", "/usr/bin/python3.11", "app.service"),
    ("java", "/usr/lib/jvm/java-17-openjdk-amd64/bin/java", "worker.service"),
    ("sshd", "/usr/sbin/sshd", "ssh.service"),
    ("postgres", "/usr/lib/postgresql/15/bin/postgres", "postgresql@15-main.service"),
    ("node", "/usr/bin/node", "frontend.service"),
    ("cron", "/usr/sbin/cron", "cron.service"),
    ("systemd-journald", "/usr/lib/systemd/systemd-journald", "systemd-journald.service"),
];

impl Host {
    pub fn new(index: usize, shape: Shape) -> Host {
        let booted = OffsetDateTime::now_utc() - time::Duration::days(3);
        let mut h = Host {
            index,
            rng: Rng::new(index as u64 + 1),
            next_pid: 1000,
            processes: Vec::new(),
            listeners: Vec::new(),
            connections: Vec::new(),
            booted,
            mixed_remotes: shape.mixed_remotes,
        };
        for _ in 0..shape.processes {
            let p = h.process();
            h.processes.push(p);
        }
        let addr = IpAddr::V4(Ipv4Addr::new(10, (index >> 16) as u8, (index >> 8) as u8, index as u8));
        let ports = [22u16, 80, 443, 5432, 8080, 9100].into_iter().chain(10_000..);
        for (i, port) in ports.take(shape.listeners).enumerate() {
            let (name, exe, _) = PROGRAMS[i % PROGRAMS.len()];
            h.listeners.push(proto::Listener {
                protocol: proto::Protocol::Tcp,
                address: IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                port,
                pid: Some(900 + i as u32),
                process: Some(name.into()),
                exe: Some(exe.into()),
                uid: 0,
                netns: None,
                auth: None,
            });
        }
        for i in 0..shape.connections as u16 {
            let c = h.connection(addr, 40000 + i);
            h.connections.push(c);
        }
        h
    }

    pub fn process(&mut self) -> proto::Process {
        let program = self.rng.below(PROGRAMS.len() as u64) as usize;
        let (name, exe, unit) = PROGRAMS[program];
        self.next_pid += 1 + self.rng.below(7) as u32;
        let start = self.booted + time::Duration::seconds(self.rng.below(200_000) as i64);
        let mut p = proto::Process::new(self.next_pid, 1, name, 33, start);
        p.exe = Some(exe.to_owned());
        p.user = Some("www-data".to_owned());
        p.cmdline = vec![
            exe.to_owned(),
            "--config".to_owned(),
            format!("/etc/{name}/{name}.conf"),
            format!("--worker-id={}", self.rng.below(64)),
        ];
        // A hash is its executable's: every process of a program on a host shares it, and the
        // fleet runs three versions of each (a roll-out under way), by blocks of 500 hosts. (The
        // two draws keep every other field of the host as it was when each process had a hash
        // of its own, which made every snapshot a few hundred random entries of the hash index.)
        let _ = (self.rng.next(), self.rng.next());
        let version = (self.index / 500 + program) % 3;
        p.sha256 = Some(format!("{:056x}{:08x}", 0x5ea1_0000 + program, version));
        p.cgroup = Some(format!("/system.slice/{unit}"));
        p.unit = Some(unit.to_owned());
        p.rss_bytes = Some(self.rng.below(512 << 20));
        p.cpu_percent = Some((self.rng.below(1000) as f32) / 100.0);
        p.ancestry = vec![proto::Ancestor {
            pid: 1,
            name: "systemd".to_owned(),
            exe: Some("/usr/lib/systemd/systemd".to_owned()),
        }]
        .into();
        p
    }

    pub fn connection(&mut self, local: IpAddr, port: u16) -> proto::Connection {
        let (name, exe, _) = PROGRAMS[self.rng.below(PROGRAMS.len() as u64) as usize];
        proto::Connection {
            protocol: proto::Protocol::Tcp,
            local_address: local,
            local_port: port,
            remote_address: if self.mixed_remotes {
                self.mixed_remote()
            } else {
                IpAddr::V4(Ipv4Addr::new(10, 9, (self.rng.below(4)) as u8, (self.rng.below(250) + 1) as u8))
            },
            remote_port: [443u16, 5432, 6379, 9092][self.rng.below(4) as usize],
            direction: proto::Direction::Outbound,
            pid: Some(1000 + self.rng.below(500) as u32),
            process: Some(name.into()),
            exe: Some(exe.into()),
            uid: 33,
            netns: None,
        }
    }

    /// A peer of a fleet: 60% in 10/8, 20% in 172.16/12, 20% public.
    fn mixed_remote(&mut self) -> IpAddr {
        let (r, a, b, c) =
            (self.rng.below(10), self.rng.below(256), self.rng.below(256), self.rng.below(254) + 1);
        IpAddr::V4(match r {
            0..=5 => Ipv4Addr::new(10, a as u8, b as u8, c as u8),
            6 | 7 => Ipv4Addr::new(172, 16 + (a % 16) as u8, b as u8, c as u8),
            _ => Ipv4Addr::new([52u8, 35, 104, 151][(a % 4) as usize], b as u8, c as u8, (a / 4) as u8),
        })
    }

    pub fn facts(&self) -> proto::HostFacts {
        let mut f =
            proto::HostFacts::new(format!("load-{:05}", self.index), format!("{:032x}", self.index + 1));
        f.os = "Debian GNU/Linux 12 (bookworm)".to_owned();
        f.kernel = "6.1.0-18-amd64".to_owned();
        f.arch = "x86_64".to_owned();
        f.tags.insert("role".to_owned(), ["web", "worker", "db"][self.index % 3].to_owned());
        f
    }

    pub fn snapshot(&self) -> proto::Snapshot {
        proto::Snapshot {
            taken_at: OffsetDateTime::now_utc(),
            processes: self.processes.clone(),
            listeners: self.listeners.clone(),
            connections: self.connections.clone(),
        }
    }

    /// At `now`: two processes end and two start; `connections` connections close and as many
    /// others open.
    pub fn delta(&mut self, now: OffsetDateTime, connections: usize) -> proto::Delta {
        let mut d = proto::Delta::default();
        for _ in 0..2 {
            if self.processes.len() > 1 {
                let gone = self.processes.swap_remove(self.rng.below(self.processes.len() as u64) as usize);
                d.processes.removed.push(proto::Removed { key: gone.key(), at: now });
            }
            let mut p = self.process();
            p.start_time = now;
            d.processes.added.push(p.clone());
            self.processes.push(p);
        }
        for _ in 0..connections {
            let Some(c) = self.connections.pop() else { break };
            d.connections.removed.push(proto::Removed { key: c.key(), at: now });
            let port = 40000 + self.rng.below(20000) as u16;
            let fresh = self.connection(c.local_address, port);
            d.connections.added.push(fresh.clone());
            self.connections.insert(0, fresh);
        }
        d
    }
}
