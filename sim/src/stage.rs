//! A whole simulated BOSH director VM in one directory: test PKI, the director over HTTPS
//! (basic auth) with numbered deployments of VMs, the two subject files, and the auth file as
//! BOSH's pre-start leaves it. Shared by the `demo` subcommand and the soak driver.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::churn::{Churn, ChurnConfig};
use crate::director::{DirectorConfig, DirectorSim, Vm};
use crate::pki::{DIRECTOR_CN, HM_CN, Pki, PkiFiles, bosh_subject};

/// What BOSH's pre-start writes before the first sync: valid NATS syntax, admits nobody.
pub const PRESTART_PLACEHOLDER: &str = "{authorization: {token: f0oBar}}\n";

/// The staged environment. Invariant: every path below exists inside `dir`; the director
/// serves `deployment-0 … deployment-{n-1}` until changed through its handle, and its event
/// log holds their deploys.
pub struct Stage {
    pub dir: PathBuf,
    pub pki: Pki,
    pub files: PkiFiles,
    pub director: DirectorSim,
    pub user: String,
    pub password: String,
    pub auth_file: PathBuf,
    pub director_subject_file: PathBuf,
    pub hm_subject_file: PathBuf,
    /// How many deployments were staged, and how many VMs each started with.
    pub deployments: usize,
    pub vms: usize,
}

impl Stage {
    /// Stages `deployments` deployments of `vms` VMs each (UUID-shaped agent ids, every third
    /// VM with permanent NATS credentials), deployed through the director's event-recording
    /// methods so the log shows the deploys, in `dir`, with basic-auth credentials `user` /
    /// `password`. The director subject file is written plain, the health monitor's with the
    /// `subject=` prefix `openssl x509 -subject` prints, as both appear on real VMs.
    pub async fn start(
        dir: &Path,
        deployments: usize,
        vms: usize,
        user: &str,
        password: &str,
    ) -> Result<Stage, Box<dyn std::error::Error + Send + Sync>> {
        let pki = Pki::generate()?;
        let pki_dir = dir.join("pki");
        std::fs::create_dir_all(&pki_dir)?;
        let files = pki.write_to(&pki_dir)?;
        let director = DirectorSim::start(
            DirectorConfig::basic(user, password).with_tls(pki.server_config()?),
        )
        .await?;
        let mut n = 0u64;
        for d in 0..deployments {
            let list = (0..vms)
                .map(|_| {
                    n += 1;
                    Vm::agent(&format!("{n:08x}-0000-4000-8000-{d:012x}"))
                        .permanent(n.is_multiple_of(3))
                })
                .collect();
            director.create_deployment(&Self::deployment_name(d), list);
        }
        let director_subject_file = dir.join("director-subject");
        let hm_subject_file = dir.join("hm-subject");
        std::fs::write(
            &director_subject_file,
            format!("{}\n", bosh_subject(DIRECTOR_CN)),
        )?;
        std::fs::write(
            &hm_subject_file,
            format!("subject={}\n", bosh_subject(HM_CN)),
        )?;
        let auth_file = dir.join("auth.json");
        std::fs::write(&auth_file, PRESTART_PLACEHOLDER)?;
        Ok(Stage {
            dir: dir.to_owned(),
            pki,
            files,
            director,
            user: user.to_owned(),
            password: password.to_owned(),
            auth_file,
            director_subject_file,
            hm_subject_file,
            deployments,
            vms,
        })
    }

    /// Starts a churn on every staged deployment (VMs created and deleted every `interval`,
    /// around the staged count, each change recorded in the event log); dropping the returned
    /// churns stops them.
    pub fn churn_every_deployment(&self, interval: Duration) -> Vec<Churn> {
        (0..self.deployments)
            .map(|d| {
                Churn::start(
                    self.director.handle(),
                    ChurnConfig::new(&Self::deployment_name(d), interval, self.vms),
                )
            })
            .collect()
    }

    /// The name of the `d`th staged deployment.
    pub fn deployment_name(d: usize) -> String {
        format!("deployment-{d}")
    }

    /// The `director:` section of a config file for this stage, in the BOSH template's keys.
    pub fn director_yaml(&self) -> String {
        format!(
            "director:\n  url: {}\n  user: {}\n  password: {}\n  client_id:\n  client_secret:\n  ca_cert: {}\n  director_subject_file: {}\n  hm_subject_file: {}\n",
            self.director.url(),
            self.user,
            self.password,
            self.files.ca_cert.display(),
            self.director_subject_file.display(),
            self.hm_subject_file.display(),
        )
    }
}
