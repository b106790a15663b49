//! MongoDB: `hello` (which every server answers, authenticated or not), then `listDatabases`
//! with `nameOnly` (which reads the catalogue and writes nothing). A server with access control
//! refuses the second with code 13 (`Unauthorized`). Both go as `OP_MSG` (wire version 6+,
//! MongoDB 3.6 and later), each a small BSON document; only the few fields a verdict needs are
//! read of the answers, by a reader that checks every length against what was received.

use std::net::SocketAddr;
use std::time::Duration;

use hostwatch_proto::v1::AuthVerdict;

use super::wire::{self, printable_bytes};
use super::{Outcome, READ_MAX};

const OP_MSG: i32 = 2013;
/// MongoDB's error code for a command that needs authentication.
const UNAUTHORIZED: i32 = 13;

pub async fn probe(target: SocketAddr, timeout: Duration) -> Outcome {
    let deadline = wire::deadline(timeout);
    let mut s = match wire::connect(target, deadline).await {
        Ok(s) => s,
        Err(e) => return e.outcome("the connection"),
    };
    let hello = op_msg(1, &document(&[("hello", Value::Int(1)), ("$db", Value::Str("admin"))]));
    let answer = match ask(&mut s, &hello, deadline).await {
        Ok(a) => a,
        Err(o) => return o,
    };
    if answer.ok != Some(true) {
        return Outcome::new(
            AuthVerdict::Unknown,
            format!("not MongoDB: hello answered {}", answer.describe()),
        );
    }
    let list = op_msg(
        2,
        &document(&[
            ("listDatabases", Value::Int(1)),
            ("nameOnly", Value::Bool(true)),
            ("$db", Value::Str("admin")),
        ]),
    );
    let answer = match ask(&mut s, &list, deadline).await {
        Ok(a) => a,
        Err(o) => return o,
    };
    judge_list(&answer)
}

fn judge_list(a: &Answer) -> Outcome {
    match (a.ok, a.code) {
        (Some(true), _) => {
            let n = a.databases.map(|n| format!(" ({n} databases)")).unwrap_or_default();
            Outcome::new(
                AuthVerdict::Unauthenticated,
                format!("hello and listDatabases answered without credentials{n}"),
            )
        }
        (Some(false), Some(UNAUTHORIZED)) => Outcome::new(
            AuthVerdict::Authenticated,
            "listDatabases refused without credentials (Unauthorized): access control is on",
        ),
        _ => Outcome::new(AuthVerdict::Unknown, format!("listDatabases answered {}", a.describe())),
    }
}

/// Sends one message and reads its answer's first document.
async fn ask(
    s: &mut tokio::net::TcpStream,
    msg: &[u8],
    deadline: tokio::time::Instant,
) -> Result<Answer, Outcome> {
    wire::send(s, msg, deadline).await.map_err(|e| e.outcome("a command"))?;
    let mut buf = Vec::new();
    match wire::read_until(s, &mut buf, deadline, whole).await {
        Ok(()) => {}
        Err(wire::Silence::Closed(said)) => {
            return Err(Outcome::new(
                AuthVerdict::Unknown,
                format!(
                    "not MongoDB (or it wants TLS): the connection closed after {:?}",
                    printable_bytes(&said, 40)
                ),
            ));
        }
        Err(e) => return Err(e.outcome("a command")),
    }
    parse_reply(&buf).ok_or_else(|| {
        Outcome::new(
            AuthVerdict::Unknown,
            format!("not MongoDB: an answer that is no OP_MSG ({:?})", printable_bytes(&buf, 40)),
        )
    })
}

/// A message is whole once its length (its first four bytes) has been read, or a probe's fill.
fn whole(b: &[u8]) -> bool {
    match b.get(..4) {
        Some(len) => {
            let len = i32::from_le_bytes([len[0], len[1], len[2], len[3]]);
            usize::try_from(len).is_ok_and(|len| b.len() >= len.min(READ_MAX))
        }
        None => false,
    }
}

/// What a probe reads of a command's answer.
#[derive(Debug, Default, PartialEq)]
pub struct Answer {
    pub ok: Option<bool>,
    pub code: Option<i32>,
    pub errmsg: Option<String>,
    /// How many databases `listDatabases` named.
    pub databases: Option<usize>,
}

impl Answer {
    fn describe(&self) -> String {
        match (&self.errmsg, self.code) {
            (Some(m), Some(c)) => format!("error {c}: {}", wire::printable(m, 100)),
            (Some(m), None) => wire::printable(m, 100),
            _ => format!("ok: {:?}", self.ok),
        }
    }
}

/// The first document of an `OP_MSG` reply: header (16 bytes), flags (4), section kind 0, BSON.
pub fn parse_reply(b: &[u8]) -> Option<Answer> {
    let len = usize::try_from(i32::from_le_bytes(b.get(..4)?.try_into().ok()?)).ok()?;
    let opcode = i32::from_le_bytes(b.get(12..16)?.try_into().ok()?);
    if opcode != OP_MSG || len < 21 {
        return None;
    }
    let msg = b.get(..len.min(b.len()))?;
    if *msg.get(20)? != 0 {
        return None;
    }
    read_document(msg.get(21..)?)
}

/// The fields of a BSON document a verdict needs; `None` if it does not hold together.
pub fn read_document(doc: &[u8]) -> Option<Answer> {
    let len = usize::try_from(i32::from_le_bytes(doc.get(..4)?.try_into().ok()?)).ok()?;
    let doc = doc.get(..len)?;
    let mut at = 4;
    let mut a = Answer::default();
    while at < doc.len() {
        let kind = doc[at];
        if kind == 0 {
            break;
        }
        at += 1;
        let name_end = at + doc.get(at..)?.iter().position(|&c| c == 0)?;
        let name = String::from_utf8_lossy(&doc[at..name_end]).into_owned();
        at = name_end + 1;
        let i32_at =
            |p: usize| -> Option<i32> { Some(i32::from_le_bytes(doc.get(p..p + 4)?.try_into().ok()?)) };
        let size = match kind {
            0x01 => {
                let v = f64::from_le_bytes(doc.get(at..at + 8)?.try_into().ok()?);
                if name == "ok" {
                    a.ok = Some(v == 1.0);
                }
                8
            }
            0x02 | 0x0D | 0x0E => {
                let n = usize::try_from(i32_at(at)?).ok()?;
                if name == "errmsg" && n > 0 {
                    a.errmsg = Some(String::from_utf8_lossy(doc.get(at + 4..at + 4 + n - 1)?).into_owned());
                }
                4usize.checked_add(n)?
            }
            0x03 | 0x04 => {
                let n = usize::try_from(i32_at(at)?).ok()?;
                if name == "databases" && kind == 0x04 {
                    a.databases = Some(count_elements(doc.get(at..at.checked_add(n)?)?)?);
                }
                n
            }
            0x05 => 5usize.checked_add(usize::try_from(i32_at(at)?).ok()?)?,
            0x07 => 12,
            0x08 => {
                if name == "ok" {
                    a.ok = Some(*doc.get(at)? == 1);
                }
                1
            }
            0x09 | 0x11 => 8,
            0x12 => {
                let v = i64::from_le_bytes(doc.get(at..at + 8)?.try_into().ok()?);
                if name == "ok" {
                    a.ok = Some(v == 1);
                }
                8
            }
            0x0A | 0x7F | 0xFF => 0,
            0x0B => {
                let first = doc.get(at..)?.iter().position(|&c| c == 0)? + 1;
                let second = doc.get(at + first..)?.iter().position(|&c| c == 0)? + 1;
                first + second
            }
            0x0F => usize::try_from(i32_at(at)?).ok()?,
            0x10 => {
                let v = i32_at(at)?;
                match name.as_str() {
                    "ok" => a.ok = Some(v == 1),
                    "code" => a.code = Some(v),
                    _ => {}
                }
                4
            }
            0x13 => 16,
            _ => return None,
        };
        at = at.checked_add(size)?;
    }
    Some(a)
}

/// Elements of an array document.
fn count_elements(doc: &[u8]) -> Option<usize> {
    // Each element of `databases` is a document; counting them means walking them.
    let mut n = 0;
    let mut at = 4;
    while at < doc.len() && doc[at] != 0 {
        let kind = doc[at];
        at += 1;
        at += doc.get(at..)?.iter().position(|&c| c == 0)? + 1;
        let size = match kind {
            0x03 | 0x04 => usize::try_from(i32::from_le_bytes(doc.get(at..at + 4)?.try_into().ok()?)).ok()?,
            0x02 => 4 + usize::try_from(i32::from_le_bytes(doc.get(at..at + 4)?.try_into().ok()?)).ok()?,
            _ => return Some(n + 1),
        };
        at = at.checked_add(size)?;
        n += 1;
    }
    Some(n)
}

/// A value of the few kinds the probe's commands hold.
pub enum Value<'a> {
    Int(i32),
    Bool(bool),
    Str(&'a str),
}

/// A BSON document of `fields`, in order.
pub fn document(fields: &[(&str, Value<'_>)]) -> Vec<u8> {
    let mut body = Vec::new();
    for (name, value) in fields {
        let kind = match value {
            Value::Int(_) => 0x10,
            Value::Bool(_) => 0x08,
            Value::Str(_) => 0x02,
        };
        body.push(kind);
        body.extend_from_slice(name.as_bytes());
        body.push(0);
        match value {
            Value::Int(v) => body.extend_from_slice(&v.to_le_bytes()),
            Value::Bool(v) => body.push(u8::from(*v)),
            Value::Str(s) => {
                body.extend_from_slice(&(s.len() as i32 + 1).to_le_bytes());
                body.extend_from_slice(s.as_bytes());
                body.push(0);
            }
        }
    }
    let mut doc = ((body.len() + 5) as i32).to_le_bytes().to_vec();
    doc.extend_from_slice(&body);
    doc.push(0);
    doc
}

/// An `OP_MSG` of one document.
pub fn op_msg(request_id: i32, doc: &[u8]) -> Vec<u8> {
    let len = 16 + 4 + 1 + doc.len();
    let mut m = Vec::with_capacity(len);
    m.extend_from_slice(&(len as i32).to_le_bytes());
    m.extend_from_slice(&request_id.to_le_bytes());
    m.extend_from_slice(&0i32.to_le_bytes());
    m.extend_from_slice(&OP_MSG.to_le_bytes());
    m.extend_from_slice(&0u32.to_le_bytes());
    m.push(0);
    m.extend_from_slice(doc);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(fields: &[(&str, Value<'_>)]) -> Vec<u8> {
        op_msg(9, &document(fields))
    }

    #[test]
    fn answers_are_read() {
        let a = parse_reply(&reply(&[("ok", Value::Int(1))])).unwrap();
        assert_eq!(a.ok, Some(true));
        let a = parse_reply(&reply(&[
            ("ok", Value::Int(0)),
            ("errmsg", Value::Str("command listDatabases requires authentication")),
            ("code", Value::Int(13)),
        ]))
        .unwrap();
        assert_eq!((a.ok, a.code), (Some(false), Some(13)));
        assert_eq!(judge_list(&a).verdict, AuthVerdict::Authenticated);
    }

    #[test]
    fn a_listing_counts_its_databases() {
        let db = |name: &str| document(&[("name", Value::Str(name))]);
        let mut array = Vec::new();
        for (i, d) in [db("admin"), db("local")].iter().enumerate() {
            array.push(0x03);
            array.extend_from_slice(i.to_string().as_bytes());
            array.push(0);
            array.extend_from_slice(d);
        }
        let mut arr = ((array.len() + 5) as i32).to_le_bytes().to_vec();
        arr.extend_from_slice(&array);
        arr.push(0);
        let mut body = vec![0x04];
        body.extend_from_slice(b"databases\0");
        body.extend_from_slice(&arr);
        body.extend_from_slice(&[0x01]);
        body.extend_from_slice(b"ok\0");
        body.extend_from_slice(&1.0f64.to_le_bytes());
        let mut doc = ((body.len() + 5) as i32).to_le_bytes().to_vec();
        doc.extend_from_slice(&body);
        doc.push(0);
        let a = parse_reply(&op_msg(1, &doc)).unwrap();
        assert_eq!((a.ok, a.databases), (Some(true), Some(2)));
        assert_eq!(judge_list(&a).verdict, AuthVerdict::Unauthenticated);
    }

    #[test]
    fn what_does_not_hold_together_is_refused() {
        let good = reply(&[("ok", Value::Int(1)), ("errmsg", Value::Str("x"))]);
        for cut in 0..good.len() {
            let _ = parse_reply(&good[..cut]);
        }
        let mut lying = good.clone();
        // The string's length claims more than the document holds.
        let at = good.len() - 7;
        lying[at..at + 4].copy_from_slice(&i32::MAX.to_le_bytes());
        let _ = parse_reply(&lying);
        assert!(parse_reply(b"HTTP/1.0 200 OK\r\n\r\n").is_none());
    }
}
