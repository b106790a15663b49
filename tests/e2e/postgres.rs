//! The private PostgreSQL server the store's tests run on (issue 17): its own cluster, reached
//! only on its own socket, surviving an immediate stop, and gone when the test is done.

use crate::support::postgres::PgServer;

#[test]
fn a_private_server_answers_on_its_own_socket_survives_a_crash_and_is_gone_after() {
    let pg = PgServer::start();
    assert_eq!(pg.psql("postgres", "SELECT 1 + 1"), "2");
    assert_eq!(pg.psql("postgres", "SHOW listen_addresses"), "", "no TCP listener, the socket only");
    assert!(pg.psql("postgres", "SELECT version()").starts_with("PostgreSQL 15"));
    pg.psql("postgres", "CREATE DATABASE hw");
    pg.psql("hw", "CREATE TABLE t (v integer); INSERT INTO t VALUES (7)");
    let dir = pg.socket_dir().to_owned();
    let socket = dir.join(".s.PGSQL.5432");
    assert!(socket.exists(), "{} missing", socket.display());
    // Stopped as a crash stops it: what was committed is there after the restart.
    pg.stop_immediately();
    assert!(!socket.exists(), "the socket outlived the server");
    pg.restart();
    assert_eq!(pg.psql("hw", "SELECT v FROM t"), "7");
    assert!(pg.url("hw").starts_with("postgres://hostwatch@/hw?host=/"));
    drop(pg);
    assert!(!dir.exists(), "{} left behind", dir.display());
    let left = crate::support::tool("pgrep").arg("-f").arg(dir.as_os_str()).output().expect("pgrep");
    assert!(!left.status.success(), "a server outlived its test: {}", String::from_utf8_lossy(&left.stdout));
}
