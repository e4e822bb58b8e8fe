//! `bosh-nats-sync -c FILE init` (§12.3): the auth file nats-server should start with, from
//! the configuration and the subject files alone — no director, no network. The BOSH job's
//! pre-start and the pod's init container run it before nats-server starts.
//!
//! - File mode (§4): the director's and the health monitor's users (§3.1) and the agents of
//!   an existing users config in the file, so that a restart of nats-server loses nobody; a
//!   placeholder, a missing file or anything else that is not a users config gives the
//!   component users only.
//! - Callout mode: the whole callout block ([`crate::callout::auth_file`]). nats-server cannot
//!   take `auth_callout` on a reload, so what cannot work is refused rather than written: an
//!   unknown director or health-monitor subject (that component could never connect), a
//!   certificate whose subject cannot be read, a seed file others may read.
//!
//! The file is written atomically (§4.4), and not at all when it already holds exactly this.

use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::authfile::{self, AuthFileError, Observed};
use crate::callout::auth_file::{self, CalloutFile, SYSTEM_ACCOUNT};
use crate::callout::keys::{KeyError, Keys};
use crate::config::{Admission, CalloutSettings, Config, ConfigError};
use crate::pass::desired::{self, Subject, Subjects};
use crate::users::{AgentId, UserSet};

/// Why `init` wrote nothing.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// What the configuration names cannot work (exit status 2).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// Reading or writing the auth file failed (exit status 1).
    #[error(transparent)]
    Io(#[from] AuthFileError),
}

/// What `init` did, for the operator: no seed is ever part of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub path: PathBuf,
    /// `file` or `callout`.
    pub admission: &'static str,
    /// False when the file already held exactly this.
    pub written: bool,
    /// The file's permission bits.
    pub mode: u32,
    /// How many users nats-server will know from the file.
    pub users: usize,
    /// One line each: a user, the agents kept, the callout block, a subject left out.
    pub details: Vec<String>,
}

/// Writes the auth file `config` says nats-server should start with.
pub fn init(config: &Config) -> Result<Outcome, InitError> {
    let path = &config.nats.auth_file;
    match &config.admission {
        Admission::File => {
            let (users, details) = file_mode(config)?;
            let written = !authfile::matches(path, &users)?;
            if written {
                authfile::write(path, &users)?;
            }
            outcome(path, "file", written, users.len(), details)
        }
        Admission::Callout(settings) => {
            let file = callout_file(config, settings)?;
            let bytes = file.render();
            let written = match fs::read(path) {
                Ok(old) => old != bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
                Err(source) => {
                    return Err(AuthFileError::Read {
                        path: path.clone(),
                        source,
                    }
                    .into());
                }
            };
            if written {
                authfile::write_with(path, |w| w.write_all(&bytes))?;
            }
            let mut details: Vec<String> = file
                .static_users
                .iter()
                .zip(["director", "health monitor"])
                .map(|(user, who)| format!("user {} ({who})", user.user))
                .collect();
            details.push(format!(
                "user {} (this service, in account {SYSTEM_ACCOUNT})",
                file.service
            ));
            details.push(format!(
                "auth_callout: issuer {}, {}, authorization timeout {} s",
                file.issuer,
                match &file.xkey {
                    Some(xkey) => format!("xkey {xkey}"),
                    None => "no xkey".to_owned(),
                },
                file.timeout.as_secs_f64()
            ));
            outcome(
                path,
                "callout",
                written,
                file.static_users.len() + 1,
                details,
            )
        }
    }
}

/// In callout mode: whether the auth file holds what [`init`] would write for `config` now.
/// `Ok(false)` means nats-server runs (or will start with) another `auth_callout` block — a
/// new issuer, a changed subject — which it cannot take on a reload: `init` and a restart of
/// nats-server are needed. File mode has nothing to check (`Ok(true)`).
pub fn callout_block_current(config: &Config) -> Result<bool, InitError> {
    let Admission::Callout(settings) = &config.admission else {
        return Ok(true);
    };
    let bytes = callout_file(config, settings)?.render();
    match fs::read(&config.nats.auth_file) {
        Ok(held) => Ok(held == bytes),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(AuthFileError::Read {
            path: config.nats.auth_file.clone(),
            source,
        }
        .into()),
    }
}

fn outcome(
    path: &Path,
    admission: &'static str,
    written: bool,
    users: usize,
    details: Vec<String>,
) -> Result<Outcome, InitError> {
    let meta = fs::metadata(path).map_err(|source| AuthFileError::Read {
        path: path.to_owned(),
        source,
    })?;
    Ok(Outcome {
        path: path.to_owned(),
        admission,
        written,
        mode: meta.permissions().mode() & 0o7777,
        users,
        details,
    })
}

/// A subject file as §3.2 reads it: the subject, or why it is unknown.
fn read_subject(path: Option<&Path>) -> Result<Subject, String> {
    let Some(path) = path else {
        return Err("not set".to_owned());
    };
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("{} does not exist", path.display()));
        }
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    match Subject::parse(&text) {
        Ok(Some(subject)) => Ok(subject),
        Ok(None) => Err(format!("{} is blank", path.display())),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// The two components, by configuration key and name.
fn components(config: &Config) -> [(&'static str, &'static str, Option<&Path>); 2] {
    [
        (
            "director.director_subject_file",
            "director",
            config.director_subject_file.as_deref(),
        ),
        (
            "director.hm_subject_file",
            "health monitor",
            config.hm_subject_file.as_deref(),
        ),
    ]
}

/// File mode: the known components' users, and the agents of the file as it is.
fn file_mode(config: &Config) -> Result<(UserSet, Vec<String>), InitError> {
    let mut details = Vec::new();
    let [director, hm] = components(config).map(|(key, who, path)| match read_subject(path) {
        Ok(subject) => {
            details.push(format!("user {} ({who})", subject.as_str()));
            Some(subject)
        }
        Err(why) => {
            details.push(format!(
                "the {who} is left out: {key}: {why} (a pass adds it once the file holds its subject)"
            ));
            None
        }
    });
    let mut users = desired::bootstrap(&Subjects { director, hm }).users;
    match authfile::read(&config.nats.auth_file)? {
        Observed::Users(existing) => {
            // Every agent the file holds a user for, with its §3.1 users (its bootstrap
            // user too where the file has one): what the first pass would keep until the
            // director says otherwise.
            let agents: Vec<(AgentId, bool)> = existing
                .agents()
                .into_iter()
                .filter_map(|(id, bootstrap)| AgentId::parse(id).ok().map(|id| (id, bootstrap)))
                .collect();
            let bootstrap = agents.iter().filter(|(_, b)| *b).count();
            details.push(format!(
                "{} agents kept from the existing file ({bootstrap} with a bootstrap user)",
                agents.len()
            ));
            users.add_agents(agents);
        }
        other => details.push(format!(
            "no agents: the existing file is {}",
            other.describe()
        )),
    }
    if users.is_empty() {
        details.push(format!(
            "no users at all: written as {} alone, which admits nobody (§4.1)",
            authfile::NOBODY
        ));
    }
    Ok((users, details))
}

/// Callout mode: everything the block needs, or the first thing that cannot work.
fn callout_file(config: &Config, settings: &CalloutSettings) -> Result<CalloutFile, InitError> {
    let problem = |key: &str, message: String| ConfigError {
        path: config.path.clone(),
        key: Some(key.to_owned()),
        message,
    };
    let mut known = Vec::with_capacity(2);
    for (key, who, path) in components(config) {
        let subject = read_subject(path).map_err(|why| {
            problem(
                key,
                format!(
                    "{why}: the {who} could never connect — in callout mode its subject must be a static \
                     user when nats-server starts (auth_callout cannot change on a reload)"
                ),
            )
        })?;
        known.push(subject);
    }
    let [director, hm]: [Subject; 2] = known
        .try_into()
        .expect("components lists exactly two subjects");
    let service = auth_file::certificate_subject(&settings.cert_file)
        .map_err(|e| problem("nats.callout.cert_file", e.to_string()))?;
    for (subject, who) in [(&director, "the director"), (&hm, "the health monitor")] {
        if subject.as_str() == service {
            let message = format!(
                "{}: the service's certificate has {who}'s subject ({service}); it needs one of its own",
                settings.cert_file.display()
            );
            return Err(problem("nats.callout.cert_file", message).into());
        }
    }
    let keys = Keys::from_files(
        &settings.issuer_seed_file,
        settings.xkey_seed_file.as_deref(),
    )
    .map_err(|e| {
        let key = match &e {
            KeyError::Read { path, .. }
            | KeyError::Readable { path, .. }
            | KeyError::NotASeed { path, .. }
            | KeyError::WrongKind { path, .. }
                if Some(path) == settings.xkey_seed_file.as_ref() =>
            {
                "nats.callout.xkey_seed_file"
            }
            _ => "nats.callout.issuer_seed_file",
        };
        problem(key, e.to_string())
    })?;
    let subjects = Subjects {
        director: Some(director),
        hm: Some(hm),
    };
    Ok(CalloutFile {
        timeout: settings.timeout,
        static_users: desired::bootstrap(&subjects).users.to_users(),
        service,
        issuer: keys.issuer.public_key(),
        xkey: keys.xkey.as_ref().map(|k| k.public_key()),
    })
}
