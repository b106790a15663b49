//! Waiting for the signals that stop a service: SIGTERM (systemd, kill) and SIGINT (Ctrl-C).

/// A token cancelled by the first SIGTERM or SIGINT. The handlers are installed before this
/// returns, so a signal that arrives at once is not lost to the default action (which would kill
/// the process without its goodbye). A second signal ends the process at once: whatever the
/// orderly stop waits for, an operator who asks twice gets the process gone.
pub fn cancel_on_signal() -> std::io::Result<tokio_util::sync::CancellationToken> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let name = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = name, "stopping");
        t.cancel();
        let again = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::warn!(signal = again, "second signal; exiting now");
        std::process::exit(1);
    });
    Ok(token)
}
