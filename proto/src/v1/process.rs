//! A process as the agent reports it.

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::timestamp;
use super::validate::{Validate, ValidationError, count, limits, nonempty, opt_text, text};

/// One running process. Kernel threads are never reported (they have no executable to explain),
/// nor zombies (they have ended and only wait for their parent).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    /// The kernel's name for it (`comm`), or the executable's file name where `comm` was cut at
    /// 15 bytes. A process can set this to anything; `exe` is what it really runs.
    pub name: String,
    /// Absolute path of the executable, without the kernel's ` (deleted)` suffix. Absent where the
    /// agent could not read it (no privilege) or the process exited while being read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// The executable was deleted (or replaced) after the process started.
    #[serde(default, skip_serializing_if = "is_false")]
    pub exe_deleted: bool,
    /// Arguments, already redacted by the agent.
    #[serde(default)]
    pub cmdline: Vec<String>,
    /// The agent cut the command line to the limits of this version.
    #[serde(default, skip_serializing_if = "is_false")]
    pub cmdline_truncated: bool,
    /// Effective user id.
    pub uid: u32,
    /// User name of `uid`, where the host's user database names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(with = "timestamp")]
    pub start_time: OffsetDateTime,
}

pub(crate) fn is_false(b: &bool) -> bool {
    !*b
}

impl Validate for Process {
    fn validate(&self) -> Result<(), ValidationError> {
        nonempty("name", &self.name, limits::MAX_NAME_BYTES)?;
        opt_text("exe", &self.exe, limits::MAX_PATH_BYTES)?;
        opt_text("user", &self.user, limits::MAX_NAME_BYTES)?;
        count("cmdline", &self.cmdline, limits::MAX_ARGS)?;
        let mut total = 0;
        for (i, arg) in self.cmdline.iter().enumerate() {
            text(format_args!("cmdline[{i}]"), arg, limits::MAX_CMDLINE_BYTES)?;
            total += arg.len();
        }
        if total > limits::MAX_CMDLINE_BYTES {
            return Err(ValidationError::new(
                "cmdline",
                format!("{total} bytes, more than the limit of {}", limits::MAX_CMDLINE_BYTES),
            ));
        }
        Ok(())
    }
}
