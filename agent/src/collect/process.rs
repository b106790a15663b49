//! Processes from `/proc`: every thread group leader but kernel threads.

use std::cell::OnceCell;
use std::path::Path;
use std::sync::Arc;

use hostwatch_proto::v1::{self as proto, is_interactive, limits};
use time::OffsetDateTime;

use super::redact::Redactor;
use super::{HostRoot, Problems, ReadFailure};

/// `PF_KTHREAD` in the `flags` field of `/proc/PID/stat`: the task is a kernel thread. This flag,
/// not a parent pid of 2 or an empty command line, is what the kernel itself goes by.
const PF_KTHREAD: u32 = 0x0020_0000;

/// `PF_EXITING`: the task is in `exit()`. Its memory goes before it turns zombie, so for a moment
/// it is still running (`R` or `D`) with no executable and no command line left to read (seen: a
/// `sleep 0.01` read in a loop showed that 1,250 times). A rescan counts it gone; an exec read
/// then keeps what is left, its name, so that the run is judged by that rather than lost.
const PF_EXITING: u32 = 0x0000_0004;

/// `comm` holds at most this many bytes (TASK_COMM_LEN - 1); a longer name was cut.
const COMM_MAX: usize = 15;

/// One process as read from `/proc`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcessRecord {
    pub pid: u32,
    pub ppid: u32,
    pub name: String,
    pub exe: Option<String>,
    pub exe_deleted: bool,
    /// Arguments, redacted ([`super::redact`]), then cut to the wire's limits.
    pub cmdline: Vec<String>,
    pub cmdline_truncated: bool,
    /// Effective uid.
    pub uid: u32,
    pub start_time: OffsetDateTime,
    /// Start time in clock ticks after boot: with the pid, the key of this process (a reused pid
    /// has another start).
    pub start_ticks: u64,
    /// The executable is a memfd (`/memfd:name`).
    pub exe_memfd: bool,
    /// The executable's directory is writable by every user.
    pub exe_writable_dir: bool,
    pub cgroup: Option<String>,
    pub container_id: Option<String>,
    pub unit: Option<String>,
    /// CPU time used (user and system), in clock ticks, when read.
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
    /// Set by the hash cache once the executable is hashed.
    pub sha256: Option<String>,
    /// Owner of `/proc/PID`: the euid, or root for a process that is not dumpable. A change
    /// means the process changed its credentials and must be read again.
    pub dir_uid: u32,
    /// Inode of its network namespace, if it could be read.
    pub netns: Option<u64>,
    /// When this record was read.
    pub read_at: OffsetDateTime,
    /// The deleted executable's path holds a new root-owned file, changed after the process
    /// started: what a package upgrade leaves behind a running service.
    pub exe_replaced: bool,
    /// For a replaced executable, what the package database says of the file now at its path;
    /// set by the observer, which keeps the package database's answers.
    pub exe_replacement: Option<hostwatch_proto::v1::ExeReplacement>,
    /// A network socket on a shell's standard input or output (`tcp 10.0.0.9:4444`).
    pub stdio_socket: Option<String>,
    /// A shell or interpreter ([`is_interactive`]): its standard streams are looked at again at
    /// every full scan ([`stdio_changed`]).
    pub interactive: bool,
    /// The socket inodes on its standard input and output when last looked at (0: not a socket).
    pub stdio_inodes: [u64; 2],
    /// The audit login uid and session id, where set.
    pub login_uid: Option<u32>,
    pub session_id: Option<u32>,
    /// Its ancestors as they were when first seen; `None` until the observer, which knows the
    /// other processes, sets them. Shared: siblings hold one list (see `child_lineage`).
    pub ancestry: Option<Arc<[hostwatch_proto::v1::Ancestor]>>,
    /// The ancestry of this process's children (itself, then its own ancestry), made once at its
    /// first child's and shared by every child after: a server's thousand workers hold one list.
    pub child_lineage: OnceCell<Arc<[hostwatch_proto::v1::Ancestor]>>,
}

/// What a rescan reads of a process it already knows: one read of `/proc/PID/stat` (and the owner
/// of `/proc/PID` where credential changes do not come as events), instead of the six reads of a
/// whole record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vitals {
    pub start_ticks: u64,
    pub ppid: u32,
    pub comm: String,
    pub cpu_ticks: u64,
    pub rss_bytes: u64,
    /// The owner of `/proc/PID`, which follows the process's credentials; `None` when not asked
    /// for (credential changes then come as events).
    pub dir_uid: Option<u32>,
}

/// The vitals of `pid`; `Ok(None)` for a kernel thread or a zombie (or one in exit()), `Err(Vanished)` if it is gone.
/// `owner`: also stat `/proc/PID` to notice changed credentials.
pub fn read_vitals(root: &HostRoot, pid: u32, owner: bool) -> Result<Option<Vitals>, ReadFailure> {
    let dir = root.proc.join(pid.to_string());
    let path = dir.join("stat");
    let stat = read_stat(&path)?;
    if stat.flags & PF_KTHREAD != 0
        || stat.flags & PF_EXITING != 0
        || matches!(stat.state, b'Z' | b'X' | b'x')
    {
        return Ok(None);
    }
    let dir_uid = if owner {
        use std::os::unix::fs::MetadataExt;
        Some(std::fs::metadata(&dir).map_err(|e| ReadFailure::of_io(&dir, &e))?.uid())
    } else {
        None
    };
    Ok(Some(Vitals {
        start_ticks: stat.starttime,
        ppid: stat.ppid,
        comm: stat.comm,
        cpu_ticks: stat.utime.saturating_add(stat.stime),
        rss_bytes: stat.rss.saturating_mul(procfs::page_size()),
        dir_uid,
    }))
}

/// The fields of `/proc/PID/stat` a rescan uses.
#[derive(Debug, PartialEq, Eq)]
struct StatLine {
    comm: String,
    state: u8,
    ppid: u32,
    flags: u32,
    utime: u64,
    stime: u64,
    starttime: u64,
    rss: u64,
}

/// Reads `/proc/PID/stat` for a rescan, which does it for every process every interval: one
/// open, one read into the stack and one close, and only the fields used parsed (procfs's
/// `Stat` stats the file first and parses all 52 fields, about twice the system calls).
fn read_stat(path: &Path) -> Result<StatLine, ReadFailure> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).map_err(|e| ReadFailure::of_io(path, &e))?;
    // A stat line is under 400 bytes; the name in it under 64.
    let mut buf = [0u8; 1024];
    let mut len = 0;
    // The kernel hands the whole line to one read; the loop is for a kernel that would not.
    while len < buf.len() && !buf[..len].ends_with(b"\n") {
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) => return Err(ReadFailure::of_io(path, &e)),
        }
    }
    parse_stat(&buf[..len]).ok_or_else(|| ReadFailure::Failed(format!("{}: not a stat line", path.display())))
}

/// `pid (comm) state ppid ...`; the name may hold spaces and parentheses, so it runs to the last
/// `)`.
fn parse_stat(line: &[u8]) -> Option<StatLine> {
    let open = line.iter().position(|b| *b == b'(')?;
    let close = line.iter().rposition(|b| *b == b')')?;
    let comm = String::from_utf8_lossy(line.get(open + 1..close)?).into_owned();
    let rest = std::str::from_utf8(line.get(close + 1..)?).ok()?;
    // Fields from the third (state) on, numbered as in proc(5) minus 3.
    let fields: Vec<&str> = rest.split_ascii_whitespace().take(22).collect();
    let num = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(StatLine {
        comm,
        state: *fields.first()?.as_bytes().first()?,
        ppid: u32::try_from(num(1)?).ok()?,
        flags: u32::try_from(num(6)?).ok()?,
        utime: num(11)?,
        stime: num(12)?,
        starttime: num(19)?,
        rss: num(21)?,
    })
}

impl ProcessRecord {
    /// Takes in what a rescan read; `false` if it is another process now (the pid was reused)
    /// or one whose credentials changed, which must be read whole.
    pub fn update(&mut self, v: &Vitals) -> bool {
        if v.start_ticks != self.start_ticks || v.dir_uid.is_some_and(|u| u != self.dir_uid) {
            return false;
        }
        self.ppid = v.ppid;
        self.cpu_ticks = v.cpu_ticks;
        self.rss_bytes = v.rss_bytes;
        self.name = process_name(&v.comm, self.exe.as_deref());
        true
    }
}

/// Turns a process's start (clock ticks after boot) into an instant.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Clock {
    boot: OffsetDateTime,
    ticks: u64,
}

impl Clock {
    /// The host's clock; a missing boot time is a problem (start times then count from 1970).
    pub fn read(root: &HostRoot, problems: &mut Problems) -> Clock {
        let boot = super::host::boot_time(&root.proc);
        if boot.is_none() {
            problems.failed.push(format!(
                "{}: no btime line; start times are unknown",
                root.proc.join("stat").display()
            ));
        }
        Clock { boot: boot.unwrap_or(OffsetDateTime::UNIX_EPOCH), ticks: procfs::ticks_per_second().max(1) }
    }

    pub fn instant(&self, start_ticks: u64) -> OffsetDateTime {
        self.boot + time::Duration::milliseconds((start_ticks.saturating_mul(1000) / self.ticks) as i64)
    }
}

/// Reads one process by pid; `Ok(None)` for a kernel thread, `Err(Vanished)` if it is gone.
/// `lineage`: read the audit login uid and session id (off only to measure what lineage costs).
pub fn read_pid(
    root: &HostRoot,
    redactor: &Redactor,
    pid: u32,
    clock: Clock,
    lineage: bool,
    problems: &mut Problems,
) -> Result<Option<ProcessRecord>, ReadFailure> {
    let p = procfs::process::Process::new_with_root(root.proc.join(pid.to_string()))
        .map_err(|e| ReadFailure::of_proc(&e))?;
    read_one(root, redactor, &p, clock, lineage, problems)
}

/// The pids in `/proc` now: a directory listing, no file read.
pub fn list_pids(root: &HostRoot) -> std::io::Result<Vec<u32>> {
    let mut pids: Vec<u32> =
        std::fs::read_dir(&root.proc)?.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok()).collect();
    pids.sort_unstable();
    Ok(pids)
}

/// One process; `Ok(None)` for a kernel thread.
fn read_one(
    root: &HostRoot,
    redactor: &Redactor,
    p: &procfs::process::Process,
    clock: Clock,
    lineage: bool,
    problems: &mut Problems,
) -> Result<Option<ProcessRecord>, ReadFailure> {
    let pid = u32::try_from(p.pid).unwrap_or_default();
    // What goes first when a process ends, read first: a process that lives a millisecond is
    // still caught with its program and arguments.
    let exe_link = p.exe();
    let cmdline_path = root.proc.join(pid.to_string()).join("cmdline");
    let raw = std::fs::read(&cmdline_path);
    let stat = p.stat().map_err(|e| ReadFailure::of_proc(&e))?;
    // Kernel threads run no program. A zombie (or a dying process) has ended and only waits for
    // its parent to collect it: its exit was seen, and unless it was caught just before it
    // ended, nothing of its program is left to read. One still in exit() (PF_EXITING) has lost
    // its program too but not its name: it is read as what is left, a process of that name.
    let ended = matches!(stat.state, 'Z' | 'X' | 'x');
    if stat.flags & PF_KTHREAD != 0 || (ended && exe_link.is_err()) {
        return Ok(None);
    }
    let status = p.status().map_err(|e| ReadFailure::of_proc(&e))?;
    let (exe, exe_deleted) = match exe_link {
        Ok(path) => {
            let (path, deleted) = strip_deleted(&path.to_string_lossy());
            (Some(path), deleted)
        }
        Err(e) => {
            ReadFailure::of_proc(&e).record(problems);
            (None, false)
        }
    };
    let raw = match raw {
        Ok(raw) => raw,
        Err(e) => {
            ReadFailure::of_io(&cmdline_path, &e).record(problems);
            Vec::new()
        }
    };
    let mut args = split_cmdline(&raw);
    redactor.redact(&mut args);
    let (cmdline, cmdline_truncated) = cut_to_limits(args);
    let start = clock.instant(stat.starttime);
    let dir = root.proc.join(pid.to_string());
    let (cgroup, container_id, unit) = match std::fs::read_to_string(dir.join("cgroup")) {
        Ok(text) => cgroup_facts(&text),
        Err(_) => (None, None, None),
    };
    let exe_memfd = exe.as_deref().is_some_and(|e| e.starts_with("/memfd:"));
    let exe_writable_dir = !exe_memfd && exe.as_deref().is_some_and(|e| writable_by_all(&dir, e));
    let dir_uid = p.uid().map_err(|e| ReadFailure::of_proc(&e))?;
    let name = process_name(&stat.comm, exe.as_deref());
    let exe_replaced = exe_deleted && !exe_memfd && exe.as_deref().is_some_and(|e| replaced(&dir, e));
    let interactive = is_interactive(&name)
        || exe.as_deref().and_then(|e| e.rsplit('/').next()).is_some_and(is_interactive);
    let stdio_inodes = if interactive { stdio_inodes(&dir) } else { [0; 2] };
    let stdio_socket = stdio_socket(root, stdio_inodes, pid);
    let (login_uid, session_id) =
        if lineage { (audit_id(&dir, "loginuid"), audit_id(&dir, "sessionid")) } else { (None, None) };
    Ok(Some(ProcessRecord {
        pid,
        ppid: u32::try_from(stat.ppid).unwrap_or_default(),
        name,
        exe,
        exe_deleted,
        cmdline,
        cmdline_truncated,
        uid: status.euid,
        start_time: start,
        start_ticks: stat.starttime,
        exe_memfd,
        exe_writable_dir,
        cgroup,
        container_id,
        unit,
        cpu_ticks: stat.utime + stat.stime,
        rss_bytes: stat.rss.saturating_mul(procfs::page_size()),
        sha256: None,
        dir_uid,
        netns: super::netns::of_pid(root, pid),
        read_at: OffsetDateTime::now_utc(),
        exe_replaced,
        exe_replacement: None,
        stdio_socket,
        interactive,
        stdio_inodes,
        login_uid,
        session_id,
        ancestry: None,
        child_lineage: OnceCell::new(),
    }))
}

/// `/proc/PID/loginuid` or `sessionid`: `None` where unset (`4294967295`, what no login started)
/// or where the kernel keeps no audit ids.
fn audit_id(proc_dir: &Path, file: &str) -> Option<u32> {
    std::fs::read_to_string(proc_dir.join(file)).ok()?.trim().parse().ok().filter(|&id| id != u32::MAX)
}

/// Looks again at the standard input and output of a shell or interpreter read earlier: a shell
/// that later reads from a socket (`exec 0<&3`, a dup2 in an exploit) is a reverse shell though it
/// ran no new program. Two readlinks; the socket tables are read only when what they point at
/// changed. Returns whether `rec` changed.
pub fn stdio_changed(root: &HostRoot, rec: &mut ProcessRecord) -> bool {
    if !rec.interactive {
        return false;
    }
    let inodes = stdio_inodes(&root.proc.join(rec.pid.to_string()));
    if inodes == rec.stdio_inodes {
        return false;
    }
    rec.stdio_inodes = inodes;
    let socket = stdio_socket(root, inodes, rec.pid);
    let changed = socket != rec.stdio_socket;
    rec.stdio_socket = socket;
    changed
}

/// Whether the path of a deleted executable (as the process sees it) holds a regular file again:
/// replaced, by an upgrade or by someone; the package database says which
/// ([`crate::snapshot::Observer`] asks it).
fn replaced(proc_dir: &Path, exe: &str) -> bool {
    std::fs::symlink_metadata(exe_inside(proc_dir, exe)).is_ok_and(|m| m.is_file())
}

/// Where the agent reads the path `exe` as the process at `proc_dir` sees it (its own root, so a
/// container's file is the container's).
pub fn exe_inside(proc_dir: &Path, exe: &str) -> std::path::PathBuf {
    proc_dir.join("root").join(exe.strip_prefix('/').unwrap_or(exe))
}

/// The socket inodes on standard input and output of the process at `proc_dir` (0 for a
/// stream that is no socket, or unreadable).
fn stdio_inodes(proc_dir: &Path) -> [u64; 2] {
    ["0", "1"].map(|fd| {
        std::fs::read_link(proc_dir.join("fd").join(fd))
            .ok()
            .and_then(|link| link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok())
            .unwrap_or(0)
    })
}

/// The network socket among `inodes` (a process's standard input and output) of process `pid`,
/// as `tcp 10.0.0.9:4444` (protocol and peer), looked up in the tables of its own network
/// namespace. A Unix socket (a service's output to the journal) is none; without a socket the
/// tables are not read.
fn stdio_socket(root: &HostRoot, inodes: [u64; 2], pid: u32) -> Option<String> {
    use super::sockets::{Want, procnet};
    if inodes == [0; 2] {
        return None;
    }
    let ns = super::netns::Netns { inode: 0, pid, own: false };
    let sockets = procnet::read(root, &ns, Want::ALL).ok()?;
    sockets
        .iter()
        .find(|s| inodes.contains(&s.inode))
        .map(|s| format!("{} {}", s.protocol.as_str(), s.remote))
}

/// Whether the directory of `exe` (a path as the process sees it) is writable by every user,
/// looked up through the process's own root so that a container's `/tmp` is the container's.
fn writable_by_all(proc_dir: &Path, exe: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let Some(parent) = Path::new(exe).parent() else { return false };
    let inside = proc_dir.join("root").join(parent.strip_prefix("/").unwrap_or(parent));
    std::fs::metadata(inside).is_ok_and(|m| m.permissions().mode() & 0o002 != 0)
}

/// The cgroup path of `/proc/PID/cgroup`, the container id in it (64 hex digits after
/// `docker-`, `cri-containerd-`, `crio-`, `libpod-` or as a whole component, like `/docker/ID`),
/// and the systemd unit (the last `.service` or `.scope` component).
///
/// On cgroup v1 and hybrid hosts the unified line often says `/` while the process sits deeper in
/// the per-controller hierarchies (Docker's cgroupfs driver does this), so the path is the first
/// that is not the root, preferring the unified line, then systemd's, then any controller's.
pub fn cgroup_facts(text: &str) -> (Option<String>, Option<String>, Option<String>) {
    let entries: Vec<(&str, &str)> = text
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            Some((controllers, path))
        })
        .collect();
    if entries.is_empty() {
        return (None, None, None);
    }
    let rank = |controllers: &str| match controllers {
        "" => 0,
        "name=systemd" => 1,
        _ => 2,
    };
    let path = entries
        .iter()
        .filter(|(_, p)| *p != "/" && !p.is_empty())
        .min_by_key(|(c, _)| rank(c))
        .map_or("/", |(_, p)| *p);
    let container = std::iter::once(path).chain(entries.iter().map(|(_, p)| *p)).find_map(container_in);
    let unit = path.rsplit('/').find(|p| p.ends_with(".service") || p.ends_with(".scope")).map(str::to_owned);
    (Some(truncate(path, limits::MAX_PATH_BYTES).to_owned()), container, unit)
}

/// The container id named by a cgroup path, if any component is one.
fn container_in(path: &str) -> Option<String> {
    path.split('/').find_map(|part| {
        let part = part.strip_suffix(".scope").unwrap_or(part);
        let id = ["docker-", "cri-containerd-", "crio-", "libpod-"]
            .iter()
            .find_map(|p| part.strip_prefix(p))
            .unwrap_or(part);
        (id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())).then(|| id.to_owned())
    })
}

/// The executable of `pid` now (without the kernel's ` (deleted)`), `None` if unreadable: for a
/// socket event of a process the agent has not read yet.
pub fn exe_of(root: &HostRoot, pid: u32) -> Option<String> {
    exe_link(root, pid).map(|(path, _)| path)
}

/// Whether the executable of `pid` has been deleted (its link says so); `false` if unreadable.
pub fn exe_deleted(root: &HostRoot, pid: u32) -> bool {
    exe_link(root, pid).is_some_and(|(_, deleted)| deleted)
}

/// `/proc/PID/exe` read now: the path, and whether the file was deleted.
fn exe_link(root: &HostRoot, pid: u32) -> Option<(String, bool)> {
    let link = std::fs::read_link(root.proc.join(pid.to_string()).join("exe")).ok()?;
    Some(strip_deleted(&link.to_string_lossy()))
}

/// What the kernel appends to the exe link of a process whose file was removed.
const DELETED: &str = " (deleted)";

/// The kernel appends ` (deleted)` to the exe link of a process whose file was removed.
pub fn strip_deleted(link: &str) -> (String, bool) {
    match link.strip_suffix(DELETED) {
        Some(path) => (path.to_owned(), true),
        None => (link.to_owned(), false),
    }
}

/// `comm`, unless the kernel cut it at 15 bytes and the executable's file name is the full
/// version of it (`systemd-journal` -> `systemd-journald`).
/// A program chooses its own name: control and invisible characters in it (an escape sequence
/// that would rewrite a terminal, a bidirectional override that shows it reversed) are replaced
/// with U+FFFD, which shows that something was there; the contract refuses a name with them.
pub fn process_name(comm: &str, exe: Option<&str>) -> String {
    let name = if comm.len() == COMM_MAX
        && let Some(base) = exe.and_then(|e| Path::new(e).file_name()).and_then(|b| b.to_str())
        && base.len() > COMM_MAX
        && base.starts_with(comm)
    {
        base
    } else if comm.is_empty() {
        "?"
    } else {
        comm
    };
    let shown = |c: char| !(c.is_control() || proto::invisible(c));
    if name.chars().all(shown) {
        return truncate(name, limits::MAX_NAME_BYTES).to_owned();
    }
    let replaced: String =
        name.chars().map(|c| if shown(c) { c } else { char::REPLACEMENT_CHARACTER }).collect();
    truncate(&replaced, limits::MAX_NAME_BYTES).to_owned()
}

/// Splits `/proc/PID/cmdline` at NULs, converting each argument lossily (a non-UTF-8 argument
/// is still reported, with U+FFFD where its bytes were invalid).
pub fn split_cmdline(raw: &[u8]) -> Vec<String> {
    let raw = raw.strip_suffix(b"\0").unwrap_or(raw);
    if raw.is_empty() {
        return Vec::new();
    }
    raw.split(|b| *b == 0).map(|part| String::from_utf8_lossy(part).into_owned()).collect()
}

/// Cuts arguments to the wire's limits; returns whether anything was cut. Runs after redaction,
/// so that a cut can never leave the beginning of a secret that redaction would have recognised.
pub fn cut_to_limits(mut args: Vec<String>) -> (Vec<String>, bool) {
    let cut = args.len() > limits::MAX_ARGS;
    args.truncate(limits::MAX_ARGS);
    let mut total = 0;
    for (i, arg) in args.iter_mut().enumerate() {
        let room = limits::MAX_CMDLINE_BYTES - total;
        if arg.len() > room {
            let keep = truncate(arg, room).len();
            arg.truncate(keep);
            args.truncate(i + 1);
            return (args, true);
        }
        total += arg.len();
    }
    (args, cut)
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lean_stat_reader_agrees_with_procfs() {
        use procfs::FromRead;
        // A name with spaces and parentheses runs to the last `)`.
        let line = b"42 (a) (b c) S 7 42 42 0 -1 4194560 10 0 0 0 5 6 0 0 20 0 1 0 999 1000 33 18446744073709551615\n";
        let s = parse_stat(line).unwrap();
        assert_eq!((s.comm.as_str(), s.state, s.ppid, s.flags), ("a) (b c", b'S', 7, 4194560));
        assert_eq!((s.utime, s.stime, s.starttime, s.rss), (5, 6, 999, 33));
        assert_eq!(parse_stat(b"42 (cut"), None);
        assert_eq!(parse_stat(b"42 (x) S 7"), None, "too few fields");
        // Against procfs, on a process of this machine that stays still while both read it.
        let mut kid = std::process::Command::new("sleep").arg("5").spawn().unwrap();
        let path = HostRoot::default().proc.join(kid.id().to_string()).join("stat");
        // Still only once asleep: just after its exec it is faulting pages in (rss 0, then not).
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while read_stat(&path).unwrap().state != b'S' {
            assert!(std::time::Instant::now() < deadline, "sleep 5 never slept");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        let mine = read_stat(&path).unwrap();
        let theirs = procfs::process::Stat::from_file(&path).unwrap();
        kid.kill().unwrap();
        kid.wait().unwrap();
        assert_eq!(
            (mine.comm.as_str(), mine.ppid, mine.flags, mine.starttime, mine.utime, mine.rss),
            (
                theirs.comm.as_str(),
                u32::try_from(theirs.ppid).unwrap(),
                theirs.flags,
                theirs.starttime,
                theirs.utime,
                theirs.rss
            )
        );
        assert!(matches!(read_stat(Path::new("/proc/0/stat")), Err(ReadFailure::Vanished)));
    }

    /// Every process on this machine, read whole.
    fn all() -> Vec<ProcessRecord> {
        let root = HostRoot::default();
        let mut problems = Problems::default();
        let clock = Clock::read(&root, &mut problems);
        list_pids(&root)
            .unwrap()
            .into_iter()
            .filter_map(|pid| {
                read_pid(&root, &Redactor::default(), pid, clock, true, &mut problems).ok().flatten()
            })
            .collect()
    }

    #[test]
    fn vitals_tell_a_reused_pid_and_new_credentials_from_the_same_process() {
        let me = all().into_iter().find(|p| p.pid == std::process::id()).unwrap();
        let v = read_vitals(&HostRoot::default(), me.pid, true).unwrap().unwrap();
        assert_eq!((v.start_ticks, v.ppid, v.dir_uid), (me.start_ticks, me.ppid, Some(me.dir_uid)));
        let mut same = me.clone();
        assert!(same.update(&v));
        assert!(same.cpu_ticks >= me.cpu_ticks);
        let mut reused = me.clone();
        assert!(!reused.update(&Vitals { start_ticks: v.start_ticks + 1, ..v.clone() }));
        assert_eq!(reused, me, "a refused update changes nothing");
        let mut setuid = me.clone();
        assert!(!setuid.update(&Vitals { dir_uid: Some(me.dir_uid + 1), ..v.clone() }));
        // Without the owner (credential changes come as events), the same process updates.
        let mut trusted = me.clone();
        assert!(trusted.update(&Vitals { dir_uid: None, ..v }));
        // Kernel threads are not processes: kthreadd, where this machine shows it.
        if let Ok(stat) = std::fs::read_to_string("/proc/2/stat")
            && stat.contains("(kthreadd)")
        {
            assert_eq!(read_vitals(&HostRoot::default(), 2, true).unwrap(), None);
        }
    }

    #[test]
    fn cgroups() {
        let id = "4f1c2e7d8a9b0c1d2e3f4a5b6c7d8e9f0a1b2c3d4e5f6a7b8c9d0e1f2a3b4c5d";
        assert_eq!(
            cgroup_facts("0::/system.slice/nginx.service\n"),
            (Some("/system.slice/nginx.service".into()), None, Some("nginx.service".into()))
        );
        let (_, c, u) = cgroup_facts(&format!("0::/system.slice/docker-{id}.scope\n"));
        assert_eq!((c.as_deref(), u), (Some(id), Some(format!("docker-{id}.scope"))));
        let (_, c, _) = cgroup_facts(&format!("12:memory:/docker/{id}\n11:cpu:/docker/{id}\n"));
        assert_eq!(c.as_deref(), Some(id));
        let (_, c, _) =
            cgroup_facts(&format!("0::/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"));
        assert_eq!(c.as_deref(), Some(id));
        let (p, c, u) = cgroup_facts("0::/user.slice/user-0.slice/session-3.scope\n");
        assert_eq!(
            (p.as_deref(), c, u.as_deref()),
            (Some("/user.slice/user-0.slice/session-3.scope"), None, Some("session-3.scope"))
        );
        assert_eq!(cgroup_facts(""), (None, None, None));
        // Hybrid host, Docker's cgroupfs driver: unified and systemd say root, controllers do not.
        let (p, c, _) = cgroup_facts(&format!("9:name=systemd:/\n8:pids:/docker/{id}\n0::/\n"));
        assert_eq!((p, c.as_deref()), (Some(format!("/docker/{id}")), Some(id)));
        // Unified line wins when it is not the root.
        let (p, _, u) = cgroup_facts("4:memory:/other\n0::/system.slice/sshd.service\n");
        assert_eq!((p.as_deref(), u.as_deref()), (Some("/system.slice/sshd.service"), Some("sshd.service")));
        // Nowhere but the root.
        assert_eq!(cgroup_facts("1:cpu:/\n0::/\n").0.as_deref(), Some("/"));
    }

    #[test]
    fn flags_for_memfd_and_world_writable_directories() {
        // This test's own executable lives in target/, not a world-writable place.
        let me = all().into_iter().find(|p| p.pid == std::process::id()).unwrap();
        assert!(!me.exe_writable_dir && !me.exe_memfd);
        assert!(me.rss_bytes > 0);
        let d = tempfile::tempdir().unwrap();
        let shared = d.path().join("shared");
        std::fs::create_dir(&shared).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let exe = shared.join("sleepy");
        std::fs::copy("/bin/sleep", &exe).unwrap();
        let mut kid = std::process::Command::new(&exe).arg("5").spawn().unwrap();
        let mut problems = Problems::default();
        let clock = Clock::read(&HostRoot::default(), &mut problems);
        let rec = read_pid(&HostRoot::default(), &Redactor::default(), kid.id(), clock, true, &mut problems)
            .ok()
            .flatten()
            .unwrap();
        kid.kill().unwrap();
        kid.wait().unwrap();
        assert!(rec.exe_writable_dir, "{rec:?}");
    }

    #[test]
    fn a_shell_on_a_tcp_socket_is_told_from_a_service_writing_to_a_unix_socket() {
        use std::os::fd::OwnedFd;
        use std::process::{Command, Stdio};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let stream = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_peer, _) = listener.accept().unwrap();
        let read = |stdin: Stdio, stdout: Stdio| {
            let mut kid = Command::new("bash")
                .args(["-c", "sleep 5; true"])
                .stdin(stdin)
                .stdout(stdout)
                .spawn()
                .unwrap();
            let mut problems = Problems::default();
            let clock = Clock::read(&HostRoot::default(), &mut problems);
            let rec =
                read_pid(&HostRoot::default(), &Redactor::default(), kid.id(), clock, true, &mut problems);
            kid.kill().unwrap();
            kid.wait().unwrap();
            rec.unwrap().unwrap().stdio_socket
        };
        let out = stream.try_clone().unwrap();
        assert_eq!(
            read(Stdio::from(OwnedFd::from(stream)), Stdio::from(OwnedFd::from(out))),
            Some(format!("tcp {}", listener.local_addr().unwrap()))
        );
        let (journal, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(read(Stdio::null(), Stdio::from(OwnedFd::from(journal))), None, "a service's shell");
        let (unix_in, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        assert_eq!(
            read(Stdio::from(OwnedFd::from(unix_in)), Stdio::null()),
            None,
            "a Unix socket is no network"
        );
    }

    /// A process caught in exit(), still `R` but with its memory gone (no exe, no command line):
    /// an exec read then is a process of its name alone, not lost; a rescan counts it gone, and
    /// a zombie is no process at all. Its `/proc` entry is made here, as the kernel shows one.
    #[test]
    fn a_process_in_exit_is_its_name_to_an_exec_and_gone_to_a_rescan() {
        let d = tempfile::tempdir().unwrap();
        let root = HostRoot::new(d.path());
        let stat = |state: char, flags: u32| {
            format!(
                "4242 (hwshort) {state} 1 4242 4242 0 -1 {flags} 100 0 0 0 1 0 0 0 20 0 1 0 7542525 3133440 390 \
                 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 0 0 0 0 0 0 0 0 0 0 0 0 0 0\n"
            )
        };
        let dir = root.proc.join("4242");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("cmdline"), b"").unwrap();
        // This process's status: every field the reader parses, as this kernel writes them.
        std::fs::copy("/proc/self/status", dir.join("status")).unwrap();
        let mut problems = Problems::default();
        let clock = Clock::read(&HostRoot::default(), &mut problems);
        let read = |problems: &mut Problems| {
            read_pid(&root, &Redactor::default(), 4242, clock, false, problems).map_err(|e| format!("{e:?}"))
        };
        // In exit() (PF_EXITING, as /proc showed a `sleep 0.01` at its end): its name is left.
        std::fs::write(dir.join("stat"), stat('R', 0x0040_000c)).unwrap();
        let exiting = read(&mut problems).unwrap().expect("what is left of it");
        assert_eq!((exiting.exe, exiting.name.as_str(), exiting.cmdline.len()), (None, "hwshort", 0));
        assert_eq!(read_vitals(&root, 4242, false).map_err(|e| format!("{e:?}")).unwrap(), None);
        std::fs::write(dir.join("stat"), stat('R', 0x0040_0000)).unwrap();
        assert!(read_vitals(&root, 4242, false).map_err(|e| format!("{e:?}")).unwrap().is_some());
        // A zombie: nothing to read.
        std::fs::write(dir.join("stat"), stat('Z', 0x0040_000c)).unwrap();
        assert_eq!(read(&mut problems).unwrap(), None);
    }

    #[test]
    fn deleted_suffix() {
        assert_eq!(strip_deleted("/usr/bin/x (deleted)"), ("/usr/bin/x".to_owned(), true));
        assert_eq!(strip_deleted("/usr/bin/x"), ("/usr/bin/x".to_owned(), false));
    }

    #[test]
    fn names_undo_comm_truncation_only() {
        assert_eq!(
            process_name("systemd-journal", Some("/usr/lib/systemd/systemd-journald")),
            "systemd-journald"
        );
        // An interpreter started through a symlink keeps the name it was started as.
        assert_eq!(process_name("python3", Some("/usr/bin/python3.11")), "python3");
        // A process that renamed itself keeps the name it chose: exe tells the truth elsewhere.
        assert_eq!(process_name("kworker/0:1abcd", Some("/tmp/xmrig")), "kworker/0:1abcd");
        assert_eq!(process_name("", None), "?");
        assert_eq!(process_name("\u{1b}[2Jx\u{202e}", None), "\u{fffd}[2Jx\u{fffd}");
        assert_eq!(process_name("a\u{9b}b\u{7f}", None), "a\u{fffd}b\u{fffd}");
    }

    #[test]
    fn cmdline_split_and_cut() {
        assert_eq!(split_cmdline(b"a\0b c\0"), ["a", "b c"]);
        assert!(split_cmdline(b"").is_empty());
        // An empty argument in the middle is an argument.
        assert_eq!(split_cmdline(b"a\0\0b\0"), ["a", "", "b"]);
        assert_eq!(split_cmdline(b"x\xffy\0"), ["x\u{fffd}y"]);
        let (args, cut) = cut_to_limits(vec!["a".repeat(limits::MAX_CMDLINE_BYTES + 10), "next".into()]);
        assert!(cut && args.len() == 1 && args[0].len() == limits::MAX_CMDLINE_BYTES);
        let (args, cut) = cut_to_limits(vec!["z".to_owned(); limits::MAX_ARGS + 5]);
        assert!(cut && args.len() == limits::MAX_ARGS);
        assert_eq!(
            cut_to_limits(vec!["ls".into(), "-l".into()]),
            (vec!["ls".to_owned(), "-l".to_owned()], false)
        );
    }

    #[test]
    fn redaction_comes_before_the_cut() {
        // A URL whose password straddles the limit: cut first, the password's start would leak.
        let pad = "x".repeat(limits::MAX_CMDLINE_BYTES - 30);
        let raw = format!("psql\0{pad}\0postgres://app:hunter2hunter2@db/x\0");
        let mut args = split_cmdline(raw.as_bytes());
        super::super::redact::redact(&mut args);
        let (args, cut) = cut_to_limits(args);
        assert!(cut);
        assert!(args.iter().all(|a| !a.contains("hunt")), "{:?}", args.last());
    }

    #[test]
    fn truncates_on_char_boundaries() {
        assert_eq!(truncate("héllo", 2), "h");
        assert_eq!(truncate("abc", 5), "abc");
    }

    #[test]
    fn scan_sees_this_process_and_no_kernel_threads() {
        let scan = all();
        let me = std::process::id();
        let rec = scan.iter().find(|p| p.pid == me).expect("own pid in the scan");
        assert_eq!(rec.exe.as_deref(), std::env::current_exe().ok().as_deref().and_then(|p| p.to_str()));
        assert_eq!(rec.ppid, std::os::unix::process::parent_id());
        assert!(!rec.cmdline.is_empty());
        // kthreadd (pid 2) is the parent of every kernel thread and one itself.
        assert!(scan.iter().all(|p| p.pid != 2 && p.ppid != 2), "kernel threads leaked into the scan");
        let now = OffsetDateTime::now_utc();
        assert!(rec.start_time <= now && rec.start_time > now - time::Duration::hours(1));
    }
}
