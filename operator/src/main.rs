//! `switchboard-operator`: flags, logging, signals. The work happens in the library.

use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};
use switchboard_operator::Settings;
use switchboard_operator::keys::{self, ConsumerRef, SecretOutcome};
use switchboard_operator::settings::LogFormat;
use tracing_subscriber::EnvFilter;

/// Switchboard operator: watches AIProvider, AIRoute, AIConsumer, AIQuota, the Secrets
/// they reference and Namespace labels, compiles them, and serves the result to
/// proxies. Also makes and revokes consumers' gateway keys (`keys`).
#[derive(Debug, Parser)]
#[command(name = "switchboard-operator", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the control plane.
    Run(Box<Settings>),
    /// Print every CustomResourceDefinition as YAML, for `kubectl apply -f -`.
    Crds,
    /// Write a throwaway CA, config-service certificate and token into a directory, for
    /// running the operator and proxies outside a cluster.
    DevPki {
        /// Directory to write ca.pem, tls.crt, tls.key and token into.
        #[arg(long, default_value = "switchboard-pki")]
        out: std::path::PathBuf,
        /// Names and addresses the certificate is valid for.
        #[arg(long = "host", default_values_t = ["localhost".to_string(), "127.0.0.1".to_string()])]
        hosts: Vec<String>,
    },
    /// Gateway keys of an AIConsumer: create (printed once), list, revoke.
    Keys {
        #[command(subcommand)]
        command: KeysCommand,
    },
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Make a random key (256 bits), store it in a new Secret in the consumer's
    /// namespace and add it to the consumer's spec.keys; existing keys stay. The key is
    /// printed once, alone on stdout.
    Create {
        #[command(flatten)]
        target: KeysTarget,
        /// Name of the new Secret; default `<consumer>-key-<random>`. Never overwritten.
        #[arg(long, value_name = "NAME")]
        secret: Option<String>,
    },
    /// Show the consumer's keys: Secret names and metadata, never values.
    List {
        #[command(flatten)]
        target: KeysTarget,
    },
    /// Remove a key from the consumer's spec.keys, then delete its Secret if `keys
    /// create` made it for this consumer. The last key is never removed.
    Revoke {
        #[command(flatten)]
        target: KeysTarget,
        /// The Secret holding the key to revoke.
        #[arg(long, value_name = "NAME")]
        secret: String,
    },
}

#[derive(Debug, Args)]
struct KeysTarget {
    /// The AIConsumer, as NAMESPACE/NAME.
    #[arg(long, value_name = "NAMESPACE/NAME")]
    consumer: ConsumerRef,
    /// Kubeconfig to use instead of the in-cluster config or $KUBECONFIG.
    #[arg(long, env = "SWITCHBOARD_KUBECONFIG", value_name = "FILE")]
    kubeconfig: Option<std::path::PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Crds => match switchboard_api::crds::all_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: cannot render CRDs: {error}");
                ExitCode::FAILURE
            }
        },
        Command::DevPki { out, hosts } => match switchboard_operator::pki::generate(&out, &hosts) {
            Ok(pki) => {
                println!(
                    "wrote {}, {}, {} and {}",
                    pki.ca.display(),
                    pki.cert.display(),
                    pki.key.display(),
                    pki.token.display()
                );
                ExitCode::SUCCESS
            }
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Keys { command } => match run_keys(command).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error:#}");
                ExitCode::FAILURE
            }
        },
        Command::Run(settings) => {
            init_logging(settings.log_format);
            match switchboard_operator::run(*settings, shutdown_signal()).await {
                Ok(()) => ExitCode::SUCCESS,
                Err(error) => {
                    tracing::error!("{error:#}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs a `keys` subcommand. Only `create` writes to stdout, and only the key; what
/// happened goes to stderr.
async fn run_keys(command: KeysCommand) -> anyhow::Result<()> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    match command {
        KeysCommand::Create { target, secret } => {
            let client = switchboard_operator::kube_client(target.kubeconfig.as_deref()).await?;
            let created = keys::create(&client, &target.consumer, secret.as_deref()).await?;
            println!("{}", created.key.expose());
            let what = if created.added {
                "added it to"
            } else {
                "it fills the reference of"
            };
            eprintln!(
                "created Secret {}/{} and {what} AIConsumer {} ({} key(s) now). The key above is \
                 shown only this once; it is stored in the Secret.",
                target.consumer.namespace, created.secret, target.consumer, created.keys
            );
        }
        KeysCommand::List { target } => {
            let client = switchboard_operator::kube_client(target.kubeconfig.as_deref()).await?;
            let listed = keys::list(&client, &target.consumer).await?;
            print!("{}", keys::render(&listed));
        }
        KeysCommand::Revoke { target, secret } => {
            let client = switchboard_operator::kube_client(target.kubeconfig.as_deref()).await?;
            let revoked = keys::revoke(&client, &target.consumer, &secret).await?;
            let namespace = &target.consumer.namespace;
            let what = match revoked.secret {
                SecretOutcome::Deleted => format!("deleted Secret {namespace}/{secret}"),
                SecretOutcome::Missing => format!("Secret {namespace}/{secret} did not exist"),
                SecretOutcome::KeptNotOurs => format!(
                    "kept Secret {namespace}/{secret}: keys create did not make it for this consumer; \
                     delete it yourself if nothing else uses it"
                ),
                SecretOutcome::KeptStillReferenced(other) => format!(
                    "kept Secret {namespace}/{secret}: AIConsumer {namespace}/{other} uses it too"
                ),
            };
            eprintln!(
                "revoked the key in Secret {secret} of AIConsumer {} ({} key(s) left); {what}",
                target.consumer, revoked.remaining
            );
        }
    }
    Ok(())
}

fn init_logging(format: LogFormat) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colours only for a terminal: escape codes in a log file or pipeline are noise.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match format {
        LogFormat::Json => builder.json().flatten_event(true).init(),
        LogFormat::Text => builder.init(),
    }
}

/// SIGTERM (Kubernetes) or Ctrl-C.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        let _ = tokio::signal::ctrl_c().await;
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
