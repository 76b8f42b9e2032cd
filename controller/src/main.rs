//! `rouse-controller --config FILE`: scaling.
//! `rouse-controller import [FILE|-|--cluster]`: the KEDA HTTP add-on's
//! HTTPScaledObjects as the `services:` of a rouse config (see
//! `rouse_controller::import`).

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Command, FromArgMatches};
use rouse_controller::import;
use rouse_nats::cli::CommonArgs;
use rouse_nats::process;

/// Exit code for input that cannot be read as Kubernetes objects.
const EXIT_BAD_INPUT: u8 = 2;

/// `rouse-controller import`.
#[derive(Debug, clap::Args)]
struct ImportArgs {
    /// HTTPScaledObjects: YAML or JSON, one or more documents, or a List
    /// (`kubectl get httpso -A -o yaml`); `-` reads stdin.
    #[arg(required_unless_present = "cluster", conflicts_with = "cluster")]
    file: Option<PathBuf>,
    /// Read the HTTPScaledObjects from the cluster instead (KUBECONFIG, or
    /// the pod's service account in a cluster).
    #[arg(long)]
    cluster: bool,
    /// With --cluster: only this namespace (default: all). With a file: the
    /// namespace of objects that name none (default: `default`).
    #[arg(long, short = 'n')]
    namespace: Option<String>,
    /// Fail (exit 1, nothing written) if anything was not carried over
    /// exactly, that is on any warning.
    #[arg(long)]
    strict: bool,
}

/// The command line: the controller's flags, or the `import` subcommand,
/// which needs no config (so `--config` is required only without it).
fn command() -> Command {
    // `augment_args` takes the structs' doc comments as `about`: set it after.
    let import = ImportArgs::augment_args(Command::new("import")).about(
        "Print the KEDA HTTP add-on's HTTPScaledObjects as rouse services \
         (YAML on stdout, warnings on stderr)",
    );
    CommonArgs::augment_args(Command::new("rouse-controller"))
        .version(env!("CARGO_PKG_VERSION"))
        .about("rouse's scaling controller")
        .subcommand(import)
        .args_conflicts_with_subcommands(true)
        .subcommand_negates_reqs(true)
}

fn main() -> ExitCode {
    let matches = command().get_matches();
    if let Some(("import", sub)) = matches.subcommand() {
        let args = ImportArgs::from_arg_matches(sub).unwrap_or_else(|e| e.exit());
        return match run_import(&args) {
            Ok(code) => code,
            Err(err) => {
                eprintln!("error: {err:#}");
                ExitCode::FAILURE
            }
        };
    }
    let common = CommonArgs::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    process::main("rouse-controller", &common, None, rouse_controller::run)
}

/// Reads, maps, checks and prints. Exit 0 (warnings allowed unless
/// `--strict`), 1 (warnings with `--strict`, services rouse would refuse,
/// the cluster unreachable), 2 (input that is not Kubernetes objects).
fn run_import(args: &ImportArgs) -> anyhow::Result<ExitCode> {
    let bad_input = |source: &str, reason: &dyn std::fmt::Display| {
        eprintln!("error: {source}: {reason}");
        Ok(ExitCode::from(EXIT_BAD_INPUT))
    };
    let (source, objects, options) = if args.cluster {
        let objects = list_cluster(args.namespace.as_deref())?;
        let source = match &args.namespace {
            Some(ns) => format!("the cluster's namespace {ns}"),
            None => "the cluster".to_string(),
        };
        if objects.is_empty() {
            anyhow::bail!("no HTTPScaledObject in {source}");
        }
        (source, objects, import::Options::default())
    } else {
        let file = args.file.clone().unwrap_or_else(|| PathBuf::from("-"));
        let (source, text) = if file.as_os_str() == "-" {
            let mut text = String::new();
            if let Err(err) = std::io::stdin().read_to_string(&mut text) {
                return bad_input("stdin", &format!("cannot read: {err}"));
            }
            ("stdin".to_string(), text)
        } else {
            let source = file.display().to_string();
            match std::fs::read_to_string(&file) {
                Ok(text) => (source, text),
                Err(err) => return bad_input(&source, &format!("cannot read: {err}")),
            }
        };
        let objects = match import::parse_documents(&text) {
            Ok(objects) => objects,
            Err(err) => return bad_input(&source, &err),
        };
        let options = import::Options {
            default_namespace: args.namespace.clone(),
        };
        (source, objects, options)
    };

    let imported = match import::import(&objects, &options) {
        Ok(imported) => imported,
        Err(err) => return bad_input(&source, &err),
    };
    for warning in &imported.warnings {
        eprintln!("warning: {warning}");
    }
    if let Err(problems) = imported.check() {
        for problem in problems {
            eprintln!("error: {problem}");
        }
        eprintln!("error: rouse would refuse these services; nothing written");
        return Ok(ExitCode::FAILURE);
    }
    let warnings = imported.warnings.len();
    if args.strict && warnings > 0 {
        eprintln!("error: {warnings} warning(s) with --strict; nothing written");
        return Ok(ExitCode::FAILURE);
    }
    let yaml = imported.to_yaml().context("writing the services as YAML")?;
    print!("{yaml}");
    eprintln!(
        "imported {} service(s) from {source}, {warnings} warning(s)",
        imported.services.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// Every HTTPScaledObject the API server has, in `namespace` or in all.
/// No test runs it (there is no API server in the tests; it was tried by
/// hand against a stub of the list endpoint); the objects it returns go
/// through the same mapping as files do.
fn list_cluster(namespace: Option<&str>) -> anyhow::Result<Vec<serde_json::Value>> {
    use kube::api::ListParams;
    use kube::core::{ApiResource, DynamicObject, GroupVersionKind, TypeMeta};

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting a runtime")?;
    runtime.block_on(async {
        // kube's errors already name their causes: `{err}`, not the chain.
        let client = kube::Client::try_default().await.map_err(|err| {
            anyhow::anyhow!("connecting to the Kubernetes API (KUBECONFIG, or in a cluster): {err}")
        })?;
        let gvk = GroupVersionKind::gvk(import::GROUP, import::VERSION, import::KIND);
        let resource = ApiResource::from_gvk_with_plural(&gvk, import::PLURAL);
        let api: kube::Api<DynamicObject> = match namespace {
            Some(ns) => kube::Api::namespaced_with(client, ns, &resource),
            None => kube::Api::all_with(client, &resource),
        };
        let list = api.list(&ListParams::default()).await.map_err(|err| {
            anyhow::anyhow!(
                "listing {}.{} (is the add-on's CRD installed, and may this user list them?): {err}",
                import::PLURAL,
                import::GROUP
            )
        })?;
        list.items
            .into_iter()
            .map(|mut object| {
                // Items of a list need not repeat their kind.
                object.types.get_or_insert_with(|| TypeMeta {
                    api_version: resource.api_version.clone(),
                    kind: resource.kind.clone(),
                });
                serde_json::to_value(object).context("reading an HTTPScaledObject")
            })
            .collect()
    })
}
