//! Reading a request body on the collector's terms: whole within a deadline, at most `limit`
//! bytes (after inflation, for a gzip body), and only while the collector's budget of body bytes
//! held at once allows. A client that sends slowly is cut off at the deadline; many clients
//! that send large bodies at once wait for the budget instead of growing the collector without
//! bound; a gzip bomb is refused after `limit` inflated bytes, having cost no more than that.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header};
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::ApiError;

/// Deadline and budget shared by every body the collector reads.
#[derive(Debug, Clone)]
pub struct Budget {
    /// Time to receive a whole body.
    pub timeout: Duration,
    /// Bytes of bodies held at once (as received and as inflated), across all requests.
    bytes: Arc<Semaphore>,
    total: usize,
}

impl Budget {
    pub fn new(timeout: Duration, max_bytes_in_flight: usize) -> Self {
        let total = max_bytes_in_flight.clamp(1, Semaphore::MAX_PERMITS);
        Budget { timeout, bytes: Arc::new(Semaphore::new(total)), total }
    }

    /// Bytes of the budget free now, for `/metrics`.
    pub fn free(&self) -> usize {
        self.bytes.available_permits()
    }

    pub fn total(&self) -> usize {
        self.total
    }

    /// Takes `n` bytes of the budget, waiting until `deadline` at most.
    async fn take(&self, n: usize, deadline: Instant, what: &str) -> Result<OwnedSemaphorePermit, ApiError> {
        let n = u32::try_from(n).map_err(|_| too_large(what, n))?;
        match tokio::time::timeout_at(deadline, self.bytes.clone().acquire_many_owned(n)).await {
            Ok(Ok(permit)) => Ok(permit),
            _ => Err(ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "collector busy reading other bodies; the {what} could not be taken in time; retry later"
                ),
            )),
        }
    }
}

/// How much an inflating buffer grows by, at least (it grows by half its size when larger).
const INFLATE_STEP: usize = 256 << 10;

/// A body read whole, holding its share of the budget until dropped.
#[derive(Debug)]
pub struct Held {
    pub bytes: Bytes,
    _budget: Vec<OwnedSemaphorePermit>,
}

fn too_large(what: &str, limit: usize) -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!("{what} body is larger than the limit of {limit} bytes"),
    )
}

/// Reads `body` whole. `gzip` content encoding is inflated; any other encoding is refused.
pub async fn read(
    budget: &Budget,
    headers: &HeaderMap,
    mut body: Body,
    what: &str,
    limit: usize,
) -> Result<Held, ApiError> {
    let gzip = match headers.get(header::CONTENT_ENCODING).map(|v| v.to_str().map(str::trim)) {
        None | Some(Ok("identity")) => false,
        Some(Ok(e)) if e.eq_ignore_ascii_case("gzip") => true,
        Some(_) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("{what} body: only gzip content encoding is accepted"),
            ));
        }
    };
    let declared =
        headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()).and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(too_large(what, limit));
    }
    let deadline = Instant::now() + budget.timeout;
    let mut held = Vec::new();
    // The budget first, the buffer after: a body waiting for its share must not hold its bytes
    // meanwhile (5,000 agents' first snapshots waiting so held 900 MB outside the budget).
    if let Some(n) = declared.filter(|n| *n > 0) {
        held.push(budget.take(n as usize, deadline, what).await?);
    }
    let mut buf = Vec::with_capacity(declared.map_or(0, |n| n as usize));
    let mut taken = declared.unwrap_or(0) as usize;
    loop {
        let frame = match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => {
                return Err(ApiError::new(
                    StatusCode::REQUEST_TIMEOUT,
                    format!("the {what} body did not arrive within {:?}", budget.timeout),
                ));
            }
            Ok(None) => break,
            Ok(Some(Err(e))) => {
                return Err(ApiError::bad_request(format!("cannot read the {what} body: {e}")));
            }
            Ok(Some(Ok(frame))) => frame,
        };
        let Ok(data) = frame.into_data() else { continue };
        if buf.len() + data.len() > limit {
            return Err(too_large(what, limit));
        }
        buf.extend_from_slice(&data);
        if buf.len() > taken {
            held.push(budget.take(buf.len() - taken, deadline, what).await?);
            taken = buf.len();
        }
    }
    if !gzip {
        return Ok(Held { bytes: Bytes::from(buf), _budget: held });
    }
    let what_owned = what.to_owned();
    // The inflated body may reach `limit` (a bomb does): its share is taken before inflating,
    // what it did not need given back after. Inflating is CPU work: off the async workers.
    let mut reserved = budget.take(limit + 1, deadline, what).await?;
    let inflated = tokio::task::spawn_blocking(move || inflate(&buf, limit, &what_owned))
        .await
        .map_err(|e| ApiError::internal(format!("inflating the body failed: {e}")))??;
    let unused = u32::try_from(limit + 1 - inflated.len()).unwrap_or(0);
    drop(reserved.split(unused as usize));
    held.push(reserved);
    Ok(Held { bytes: Bytes::from(inflated), _budget: held })
}

/// Inflates a gzip body, refusing it as soon as it passes `limit` bytes. The buffer grows by at
/// most [`INFLATE_STEP`] at a time and never past `limit + 1`, so a bomb costs `limit` bytes, not
/// the next power of two above it.
fn inflate(compressed: &[u8], limit: usize, what: &str) -> Result<Vec<u8>, ApiError> {
    let mut out: Vec<u8> = Vec::new();
    let mut decoder = flate2::read::MultiGzDecoder::new(compressed).take(limit as u64 + 1);
    loop {
        if out.len() == out.capacity() {
            let room = (limit + 1 - out.len()).min(INFLATE_STEP.max(out.len() / 2));
            if room == 0 {
                break;
            }
            out.reserve_exact(room);
        }
        let start = out.len();
        let spare = out.capacity() - start;
        out.resize(start + spare, 0);
        match decoder.read(&mut out[start..]) {
            Ok(0) => {
                out.truncate(start);
                break;
            }
            Ok(n) => out.truncate(start + n),
            Err(e) => return Err(ApiError::bad_request(format!("the {what} body is not valid gzip: {e}"))),
        }
    }
    if out.len() > limit {
        return Err(ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("{what} body inflates to more than the limit of {limit} bytes"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gzip(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn gzip_headers() -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::CONTENT_ENCODING, "gzip".parse().unwrap());
        h
    }

    #[tokio::test]
    async fn a_gzip_body_is_inflated_and_a_bomb_refused_at_the_limit() {
        // As the configuration requires: room for a body and the worst case of its inflation.
        let budget = Budget::new(Duration::from_secs(5), 2 << 20 | 1);
        let ok = read(&budget, &gzip_headers(), Body::from(gzip(b"{\"a\":1}")), "report", 100).await.unwrap();
        assert_eq!(&ok.bytes[..], b"{\"a\":1}");
        // 16 MiB of zeros squeeze into about 16 KiB.
        let bomb = gzip(&vec![0u8; 16 << 20]);
        assert!(bomb.len() < 64 << 10);
        let e = read(&budget, &gzip_headers(), Body::from(bomb), "report", 1 << 20).await.unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE, "{}", e.message);
        assert!(e.message.contains("inflates to more than"), "{}", e.message);
        // Everything given back once the bodies are gone.
        drop(ok);
        assert_eq!(budget.free(), budget.total());
        let e = read(&budget, &gzip_headers(), Body::from("not gzip"), "report", 100).await.unwrap_err();
        assert_eq!(e.status, StatusCode::BAD_REQUEST);
    }

    #[tokio::test]
    async fn limits_encodings_and_the_budget() {
        let budget = Budget::new(Duration::from_secs(5), 1000);
        let e =
            read(&budget, &HeaderMap::new(), Body::from(vec![b'x'; 101]), "report", 100).await.unwrap_err();
        assert_eq!(e.status, StatusCode::PAYLOAD_TOO_LARGE);
        let mut br = HeaderMap::new();
        br.insert(header::CONTENT_ENCODING, "br".parse().unwrap());
        let e = read(&budget, &br, Body::from("x"), "report", 100).await.unwrap_err();
        assert_eq!(e.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
        // Holding 900 of 1000 bytes: a body of 200 waits for the budget, and gets it once freed.
        let big =
            read(&budget, &HeaderMap::new(), Body::from(vec![b'x'; 900]), "report", 1000).await.unwrap();
        assert_eq!(budget.free(), 100);
        let b2 = budget.clone();
        let waiting = tokio::spawn(async move {
            read(&b2, &HeaderMap::new(), Body::from(vec![b'y'; 200]), "report", 1000)
                .await
                .map(|h| h.bytes.len())
        });
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(!waiting.is_finished(), "took 200 bytes of a budget with 100 free");
        drop(big);
        assert_eq!(waiting.await.unwrap().unwrap(), 200);
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_cut_off() {
        let budget = Budget::new(Duration::from_millis(300), 1000);
        let (mut tx, rx) = tokio::io::duplex(64);
        let body = Body::from_stream(tokio_util::io::ReaderStream::new(rx));
        let slow = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for _ in 0..100 {
                if tx.write_all(b"x").await.is_err() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
        let e = read(&budget, &HeaderMap::new(), body, "report", 1000).await.unwrap_err();
        assert_eq!(e.status, StatusCode::REQUEST_TIMEOUT, "{}", e.message);
        slow.abort();
        assert_eq!(budget.free(), 1000);
    }
}
