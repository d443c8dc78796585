//! The exit codes, decided here and nowhere else (README "Commands"):
//!
//! - 0: every target reached an expected outcome;
//! - 1: some target is parked or unfinished (a run stopped with Ctrl-C too);
//! - 2: bad input, refused before anything was written (every value is checked at the edge:
//!   `common.rs`, the policy, the fleet file), or another error that stopped the command;
//! - 3: ARM or the credential could not be reached: no answer, timeouts, ARM still throttling
//!   or failing after the client's retries, a token that could not be had or was refused.
//!
//! Errors print as one line: what is wrong, then its causes.

use std::error::Error;
use std::process::ExitCode;

use crate::azure::arm::ArmError;
use crate::azure::credential::CredentialError;
use crate::migration::StepError;
use crate::report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    Done,
    NeedsOperator,
    BadInput,
    Unreachable,
}

impl From<Exit> for ExitCode {
    fn from(e: Exit) -> ExitCode {
        ExitCode::from(match e {
            Exit::Done => 0,
            Exit::NeedsOperator => 1,
            Exit::BadInput => 2,
            Exit::Unreachable => 3,
        })
    }
}

/// A command holding a state file was stopped with Ctrl-C: its targets are left unfinished.
#[derive(Debug, thiserror::Error)]
#[error("interrupted: targets are left unfinished (`run` resumes with the same --state)")]
pub(crate) struct Interrupted;

impl Exit {
    pub(crate) fn of_report(report: &Report) -> Exit {
        if report.needs_operator() {
            Exit::NeedsOperator
        } else {
            Exit::Done
        }
    }

    /// What to do, after an error's own text (which says what is wrong).
    pub(crate) fn hint(self) -> &'static str {
        match self {
            Exit::Unreachable => {
                "; check the network, --arm-endpoint and the credential, then run again"
            }
            _ => "",
        }
    }

    /// The code for an error that stopped a command: the first cause in its chain that says
    /// what happened decides.
    pub(crate) fn of_error(err: &anyhow::Error) -> Exit {
        err.chain()
            .find_map(Self::of_cause)
            .unwrap_or(Exit::BadInput)
    }

    fn of_cause(e: &(dyn Error + 'static)) -> Option<Exit> {
        if e.is::<Interrupted>() {
            return Some(Exit::NeedsOperator);
        }
        // `StepError::Arm` is transparent: its ARM error is not itself in the chain.
        let arm = e
            .downcast_ref::<ArmError>()
            .or(match e.downcast_ref::<StepError>() {
                Some(StepError::Arm(a)) => Some(a),
                _ => None,
            });
        if let Some(a) = arm {
            return Some(if arm_unreachable(a) {
                Exit::Unreachable
            } else {
                Exit::BadInput
            });
        }
        match e.downcast_ref::<CredentialError>() {
            Some(CredentialError::Provider { .. }) => Some(Exit::Unreachable),
            Some(_) => Some(Exit::BadInput),
            None => None,
        }
    }
}

/// ARM did not answer, or answered only "not now" after the client's retries, or the
/// credential behind the request failed; anything else ARM said is an answer about the input.
fn arm_unreachable(a: &ArmError) -> bool {
    match a {
        ArmError::Transport { .. } | ArmError::Timeout { .. } | ArmError::LroTimeout { .. } => true,
        ArmError::Credential(c) => matches!(c, CredentialError::Provider { .. }),
        // 401: ARM refused the token (expired, another tenant): the credential, not the input.
        ArmError::Status { status, .. } => {
            matches!(status, 401 | 408 | 429) || (500..600).contains(status)
        }
        _ => false,
    }
}

/// A command-line error from clap as one line: what is wrong, then where to look. Help and
/// version requests print as clap formats them.
pub(crate) fn clap_error(e: &clap::Error) -> ExitCode {
    if !e.use_stderr() {
        let _ = e.print();
        return Exit::Done.into();
    }
    eprintln!("{}", clap_one_line(e));
    Exit::BadInput.into()
}

/// clap's message up to its usage block, blank lines and the `--help` pointer dropped, joined;
/// for no command at all (where clap prints the whole help), the commands there are.
pub(super) fn clap_one_line(e: &clap::Error) -> String {
    use clap::CommandFactory;
    if e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand {
        let commands: Vec<String> = super::Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_string())
            .collect();
        return format!(
            "error: no command given; one of {} (see --help)",
            commands.join(", ")
        );
    }
    let text = e.render().to_string();
    let what: Vec<&str> = text
        .lines()
        .take_while(|l| !l.starts_with("Usage:"))
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("For more information"))
        .collect();
    format!("{} (see --help)", what.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::azure::arm::ArmError;

    fn status(status: u16) -> ArmError {
        ArmError::Status {
            status,
            code: "X".into(),
            message: String::new(),
            method: "GET".into(),
            path: "/x".into(),
            retry_after: None,
        }
    }

    #[test]
    fn unreachable_arm_and_credentials_exit_3_answers_exit_2() {
        let code = |e: anyhow::Error| Exit::of_error(&e);
        for s in [401, 408, 429, 500, 503] {
            assert_eq!(code(status(s).into()), Exit::Unreachable, "{s}");
        }
        for s in [400, 403, 404, 409] {
            assert_eq!(code(status(s).into()), Exit::BadInput, "{s}");
        }
        let timeout = || ArmError::Timeout {
            method: "GET".into(),
            path: "/x".into(),
        };
        assert_eq!(code(timeout().into()), Exit::Unreachable);
        // Through the step error and the context the commands add.
        let wrapped = anyhow::Error::new(StepError::Arm(timeout())).context("cannot list");
        assert_eq!(code(wrapped), Exit::Unreachable);
        let provider = || CredentialError::Provider {
            kind: "azure-cli",
            message: "not logged in".into(),
        };
        assert_eq!(
            code(anyhow::Error::new(provider()).context("credential")),
            Exit::Unreachable
        );
        assert_eq!(
            code(ArmError::Credential(provider()).into()),
            Exit::Unreachable
        );
        assert_eq!(
            code(CredentialError::UnknownKind("x".into()).into()),
            Exit::BadInput
        );
        assert_eq!(
            code(
                ArmError::OutOfScope {
                    method: "PUT".into(),
                    path: "/x".into()
                }
                .into()
            ),
            Exit::BadInput
        );
        assert_eq!(code(anyhow::anyhow!("no scope")), Exit::BadInput);
        assert_eq!(code(anyhow::Error::new(Interrupted)), Exit::NeedsOperator);
    }

    #[test]
    fn clap_errors_become_one_line() {
        use clap::Parser;
        for args in [
            vec!["vnet-migrate"],
            vec!["vnet-migrate", "rehearse", "--generate", "0"],
            vec!["vnet-migrate", "snapshot"],
            vec!["vnet-migrate", "--bogus"],
            vec!["vnet-migrate", "rehearse", "--seed", "-1"],
        ] {
            let e = super::super::Cli::try_parse_from(&args).unwrap_err();
            let line = clap_one_line(&e);
            assert!(!line.contains('\n'), "{args:?}: {line}");
            assert!(line.starts_with("error: "), "{args:?}: {line}");
            assert!(line.ends_with("(see --help)"), "{args:?}: {line}");
        }
        let e = super::super::Cli::try_parse_from(["vnet-migrate", "snapshot"]).unwrap_err();
        assert!(
            clap_one_line(&e).contains("--out"),
            "the missing flag is named"
        );
        let e = super::super::Cli::try_parse_from(["vnet-migrate"]).unwrap_err();
        assert!(
            clap_one_line(&e).starts_with("error: no command given; one of rehearse, plan, run,"),
            "{}",
            clap_one_line(&e)
        );
    }
}
