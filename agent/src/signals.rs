//! Waiting for the signals that stop a service: SIGTERM (systemd, kill) and SIGINT (Ctrl-C).

/// Resolves with the signal's name when the first of SIGTERM or SIGINT arrives.
pub async fn shutdown_signal() -> std::io::Result<&'static str> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    Ok(tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    })
}

/// A token cancelled by the first SIGTERM or SIGINT (or at once if signals cannot be watched).
pub fn cancel_on_signal() -> tokio_util::sync::CancellationToken {
    let token = tokio_util::sync::CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        match shutdown_signal().await {
            Ok(name) => tracing::info!(signal = name, "stopping"),
            Err(e) => tracing::error!(error = %e, "cannot watch for signals; stopping"),
        }
        t.cancel();
    });
    token
}
