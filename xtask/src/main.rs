//! `cargo xtask dist [--target x86_64|aarch64|all] [--twice [ARCH]]`: the release, into
//! `dist/`.
//! `cargo xtask test-deps`: the Python tools some tests drive, into `target/ci-venv`.
//!
//! For each architecture: a static binary (musl, mimalloc, stripped), a .deb (cargo-deb)
//! and a gzip-compressed .rpm (cargo-generate-rpm), then `SHA256SUMS` over all of them.
//! Builds use `--locked`, `SOURCE_DATE_EPOCH` from the commit and remapped source paths, so
//! two builds of one commit give the same bytes: `--twice` builds each binary (or only
//! ARCH's) a second time, from scratch in a target directory of its own, packages it a
//! second time, and fails unless the bytes match. Every build runs at once, each in a
//! target directory of its own (from scratch on two cores that takes as long as one after
//! the other, 461 s against 465 s; it saves the waiting where the dependencies are built). Needs: the rustup targets `x86_64-unknown-linux-musl` and
//! `aarch64-unknown-linux-musl`, Debian's `musl-tools` and `gcc-aarch64-linux-gnu`, and
//! `cargo install cargo-deb cargo-generate-rpm` (`.ci/run` installs all of them).

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

/// An architecture: its musl target, and its name in file names and packages.
struct Arch {
    target: &'static str,
    name: &'static str,
    deb: &'static str,
}

const ARCHES: [Arch; 2] = [
    Arch {
        target: "x86_64-unknown-linux-musl",
        name: "x86_64",
        deb: "amd64",
    },
    Arch {
        target: "aarch64-unknown-linux-musl",
        name: "aarch64",
        deb: "arm64",
    },
];

fn main() -> ExitCode {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let image = args.iter().any(|a| a == "--image");
    args.retain(|a| a != "--image");
    let twice = match args.iter().position(|a| a == "--twice") {
        None => Twice::None,
        Some(at) => {
            args.remove(at);
            match args.get(at).map(String::as_str) {
                Some(arch) if ARCHES.iter().any(|a| a.name == arch) => Twice::Only(args.remove(at)),
                _ => Twice::All,
            }
        }
    };
    let wanted = match args.iter().map(String::as_str).collect::<Vec<_>>()[..] {
        ["dist"] | ["dist", "--target", "all"] => vec!["x86_64", "aarch64"],
        ["dist", "--target", arch] => vec![arch],
        ["test-deps"] => {
            return match test_deps() {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("xtask test-deps: {e}");
                    ExitCode::FAILURE
                }
            };
        }
        _ => {
            eprintln!(
                "usage: cargo xtask dist [--target x86_64|aarch64|all] [--twice [x86_64|aarch64]] [--image]\n       cargo xtask test-deps"
            );
            return ExitCode::from(2);
        }
    };
    match dist(&wanted, &twice, image) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask dist: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Starts a release build of `arch` with its target directory at `dir`; its output is
/// kept to show if it fails.
fn start_build(
    arch: &Arch,
    dir: &Path,
    env: &dyn Fn(&mut Command),
) -> Result<std::process::Child, String> {
    let mut build = Command::new("cargo");
    build
        .args([
            "build",
            "--locked",
            "--profile",
            "dist",
            "--package",
            "snirelay",
        ])
        .args([
            "--bin",
            "snirelay",
            "--features",
            "mimalloc",
            "--target",
            arch.target,
        ])
        .env("CARGO_TARGET_DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    env(&mut build);
    eprintln!("xtask: building {} in {}", arch.target, dir.display());
    build.spawn().map_err(|e| format!("cargo: {e}"))
}

/// Waits for a build [`start_build`] started.
fn finish_build(build: std::process::Child, arch: &Arch) -> Result<(), String> {
    let started = std::time::Instant::now();
    let out = build.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "building {} failed:\n{}",
            arch.target,
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    eprintln!(
        "xtask: {} built (waited {:.1} s more)",
        arch.target,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `--image`: an OCI archive of an image holding nothing but the static binary, the
/// default rules, the build machine's CA certificates (for `probe`) and its metadata, run
/// as a numeric non-root user. Built with podman, no base image, its times set to the
/// commit's, so the same commit gives the same archive (`--twice` makes it twice).
fn oci_image(
    root: &Path,
    arch: &Arch,
    binary: &Path,
    version: &str,
    epoch: &str,
) -> Result<PathBuf, String> {
    let context = root.join(format!("target/image-{}", arch.name));
    let _ = std::fs::remove_dir_all(&context);
    std::fs::create_dir_all(&context).map_err(|e| e.to_string())?;
    let copy = |from: &Path, to: &str| {
        std::fs::copy(from, context.join(to)).map_err(|e| format!("{}: {e}", from.display()))
    };
    copy(binary, "snirelay")?;
    copy(&root.join("rules.json"), "rules.json")?;
    copy(Path::new(CA_CERTIFICATES), "ca-certificates.crt")?;
    let commit = run(Command::new("git").args(["rev-parse", "HEAD"]))?;
    // Where the commit can be fetched: the checkout's origin.
    let source = run(Command::new("git").args(["remote", "get-url", "origin"]))
        .unwrap_or_else(|_| "unknown".to_owned());
    let containerfile = format!(
        "FROM scratch\n\
         COPY snirelay /usr/bin/snirelay\n\
         COPY rules.json /etc/snirelay/rules.json\n\
         COPY ca-certificates.crt {CA_CERTIFICATES}\n\
         USER 65532:65532\n\
         EXPOSE 443 8443 9090\n\
         LABEL org.opencontainers.image.title=\"snirelay\" \\\n\
         \x20     org.opencontainers.image.version=\"{version}\" \\\n\
         \x20     org.opencontainers.image.revision=\"{commit}\" \\\n\
         \x20     org.opencontainers.image.source=\"{source}\" \\\n\
         \x20     org.opencontainers.image.licenses=\"MIT OR Apache-2.0\"\n\
         ENTRYPOINT [\"/usr/bin/snirelay\"]\n\
         CMD [\"run\", \"--config\", \"/etc/snirelay/rules.json\"]\n"
    );
    std::fs::write(context.join("Containerfile"), containerfile).map_err(|e| e.to_string())?;
    let tag = format!("snirelay:{version}");
    run(Command::new("podman")
        .args([
            "--runtime",
            "runc",
            "build",
            "--quiet",
            "--timestamp",
            epoch,
        ])
        .args(["--platform", &format!("linux/{}", arch.deb), "--tag", &tag])
        .arg(&context))?;
    // podman's own archive stamps its entries with the time of saving: save the layout as
    // a directory and pack it with fixed times, owners and order instead.
    let layout = context.join("oci");
    run(Command::new("podman")
        .args(["save", "--format", "oci-dir", "--output"])
        .arg(&layout)
        .arg(&tag))?;
    let archive = root.join(format!("dist/snirelay-{version}-{}-oci.tar", arch.name));
    run(Command::new("tar")
        .args(["--sort=name", "--owner=0", "--group=0", "--numeric-owner"])
        .arg(format!("--mtime=@{epoch}"))
        .arg("--create")
        .arg("--file")
        .arg(&archive)
        .arg("--directory")
        .arg(&layout)
        .args(["blobs", "index.json", "oci-layout"]))?;
    Ok(archive)
}

/// Debian's bundle of the CA certificates, where rustls-native-certs looks for it.
const CA_CERTIFICATES: &str = "/etc/ssl/certs/ca-certificates.crt";

/// Which binaries `--twice` builds a second time.
enum Twice {
    None,
    All,
    Only(String),
}

impl Twice {
    fn wants(&self, arch: &Arch) -> bool {
        match self {
            Twice::None => false,
            Twice::All => true,
            Twice::Only(name) => name == arch.name,
        }
    }
}

/// Runs `cmd`, saying what it runs and, when done, how long it took: a release build is
/// minutes of cargo's output kept back.
fn run(cmd: &mut Command) -> Result<String, String> {
    let shown: Vec<String> = std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let shown = shown.join(" ");
    eprintln!("xtask: {shown}");
    let started = std::time::Instant::now();
    let out = cmd
        .output()
        .map_err(|e| format!("{:?}: {e}", cmd.get_program()))?;
    eprintln!("xtask:   done in {:.1} s", started.elapsed().as_secs_f64());
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The Python tools the suite drives, pinned: kubernetes-validate checks the Kubernetes
/// manifests against the API schemas it ships (no cluster), grpcio is the real gRPC client
/// of tests/grpc_client.rs and, with requests, of tests/proxy_clients.rs. Into a virtualenv under target/ (never committed), once: run
/// again, it only checks. The tests find them there without any PATH change.
const PYTHON_TOOLS: [&str; 3] = [
    "kubernetes-validate==1.37.0",
    "grpcio==1.85.3",
    "requests==2.32.3",
];

fn test_deps() -> Result<(), String> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_owned();
    let venv = root.join("target/ci-venv");
    let python = venv.join("bin/python3");
    let ready = venv.join("bin/kubernetes-validate").is_file()
        && Command::new(&python)
            .args(["-c", "import grpc, requests"])
            .output()
            .is_ok_and(|o| o.status.success());
    if ready {
        eprintln!("xtask test-deps: {} has them already", venv.display());
        return Ok(());
    }
    if !python.is_file() {
        run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    }
    run(Command::new(venv.join("bin/pip"))
        .args(["install", "--quiet", "--disable-pip-version-check"])
        .args(PYTHON_TOOLS))?;
    Ok(())
}

/// What this machine has of what a release for some architectures needs.
#[derive(Debug, Default)]
struct Found {
    /// `rustup target list --installed`.
    targets: Vec<String>,
    /// Programs on PATH, by name.
    programs: Vec<&'static str>,
}

impl Found {
    fn here() -> Found {
        let targets = run(Command::new("rustup").args(["target", "list", "--installed"]))
            .map(|out| out.lines().map(str::to_owned).collect())
            .unwrap_or_default();
        let on_path = |name: &str| {
            std::env::var_os("PATH").is_some_and(|path| {
                std::env::split_paths(&path).any(|dir| dir.join(name).is_file())
            })
        };
        let programs = [
            "musl-gcc",
            "aarch64-linux-gnu-gcc",
            "cargo-deb",
            "cargo-generate-rpm",
            "podman",
        ]
        .into_iter()
        .filter(|name| on_path(name))
        .collect();
        Found { targets, programs }
    }
}

/// The commands that install what `found` lacks for a release of `wanted`, in order. Pure.
fn missing(found: &Found, wanted: &[&str], image: bool) -> Vec<String> {
    let mut commands = Vec::new();
    for arch in ARCHES.iter().filter(|a| wanted.contains(&a.name)) {
        if !found.targets.iter().any(|t| t == arch.target) {
            commands.push(format!("rustup target add {}", arch.target));
        }
        let (compiler, package) = match arch.name {
            "x86_64" => ("musl-gcc", "musl-tools"),
            _ => ("aarch64-linux-gnu-gcc", "gcc-aarch64-linux-gnu"),
        };
        if !found.programs.contains(&compiler) {
            commands.push(format!("apt-get install {package}"));
        }
    }
    for tool in ["cargo-deb", "cargo-generate-rpm"] {
        if !found.programs.contains(&tool) {
            commands.push(format!("cargo install {tool} --locked"));
        }
    }
    if image && !found.programs.contains(&"podman") {
        commands.push("apt-get install podman runc".to_owned());
    }
    commands
}

fn dist(wanted: &[&str], twice: &Twice, image: bool) -> Result<(), String> {
    let lacking = missing(&Found::here(), wanted, image);
    if !lacking.is_empty() {
        return Err(format!(
            "this machine lacks what the release needs; run, then try again:\n  {}",
            lacking.join("\n  ")
        ));
    }
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .ok_or("no workspace root")?
        .to_owned();
    std::env::set_current_dir(&root).map_err(|e| e.to_string())?;
    let epoch = run(Command::new("git").args(["log", "-1", "--format=%ct"]))?;
    let version = run(Command::new("cargo").args(["pkgid", "--package", "snirelay"]))?;
    let version = version
        .rsplit(['#', '@'])
        .next()
        .unwrap_or("0.0.0")
        .to_owned();
    let dist = root.join("dist");
    std::fs::create_dir_all(&dist).map_err(|e| e.to_string())?;
    package_units(&root)?;
    let cargo_home = std::env::var("CARGO_HOME")
        .unwrap_or_else(|_| format!("{}/.cargo", std::env::var("HOME").unwrap_or_default()));
    let rustflags = format!(
        "--remap-path-prefix={}=/snirelay --remap-path-prefix={cargo_home}=/cargo",
        root.display()
    );
    let env = |cmd: &mut Command| {
        cmd.env("SOURCE_DATE_EPOCH", &epoch)
            .env("RUSTFLAGS", &rustflags)
            .env("CC_aarch64_unknown_linux_musl", "aarch64-linux-gnu-gcc")
            .env("AR_aarch64_unknown_linux_musl", "aarch64-linux-gnu-ar")
            .env("CC_x86_64_unknown_linux_musl", "musl-gcc");
    };
    // Every build starts now, each in a target directory of its own (cargo locks one per
    // build): the first architecture's in target/, where the packagers look; a second
    // architecture's beside it, copied there when done; a second build of one binary from
    // scratch, to compare.
    let arches: Vec<&Arch> = ARCHES.iter().filter(|a| wanted.contains(&a.name)).collect();
    let mut builds = Vec::new();
    for (i, arch) in arches.iter().enumerate() {
        let dir = match i {
            0 => root.join("target"),
            _ => root.join(format!("target/dist-{}", arch.name)),
        };
        let first = start_build(arch, &dir, &env)?;
        let second = match twice.wants(arch) {
            true => {
                let again = root.join(format!("target/reproducible-{}", arch.name));
                let _ = std::fs::remove_dir_all(&again);
                Some((start_build(arch, &again, &env)?, again))
            }
            false => None,
        };
        builds.push((*arch, first, dir, second));
    }
    let mut made = Vec::new();
    for (arch, first, dir, second) in builds {
        finish_build(first, arch)?;
        let built = dir.join(format!("{}/dist/snirelay", arch.target));
        let expected = root.join(format!("target/{}/dist/snirelay", arch.target));
        if built != expected {
            std::fs::create_dir_all(expected.parent().ok_or("no parent")?)
                .map_err(|e| e.to_string())?;
            std::fs::copy(&built, &expected).map_err(|e| format!("{}: {e}", built.display()))?;
        }
        let binary = dist.join(format!("snirelay-{version}-{}-linux-static", arch.name));
        std::fs::copy(&built, &binary).map_err(|e| format!("{}: {e}", built.display()))?;
        made.push(binary);
        let twice = second.is_some();
        if let Some((second, again)) = second {
            finish_build(second, arch)?;
            same_bytes(
                &built,
                &again.join(format!("{}/dist/snirelay", arch.target)),
            )?;
            eprintln!("{}: two builds, same bytes", arch.target);
        }
        let packages = package(arch, &dist, &env)?;
        if twice {
            let again = root.join("target/reproducible/dist");
            let _ = std::fs::remove_dir_all(&again);
            std::fs::create_dir_all(&again).map_err(|e| e.to_string())?;
            for (first, second) in packages.iter().zip(package(arch, &again, &env)?) {
                same_bytes(first, &second)?;
            }
            eprintln!("{}: packages made twice, same bytes", arch.name);
        }
        made.extend(packages);
        eprintln!("packaged {} ({})", arch.name, arch.deb);
        if image {
            let archive = oci_image(&root, arch, &built, &version, &epoch)?;
            if twice {
                let kept = root.join("target/reproducible/dist/oci.tar");
                std::fs::copy(&archive, &kept).map_err(|e| e.to_string())?;
                oci_image(&root, arch, &built, &version, &epoch)?;
                same_bytes(&kept, &archive)?;
                eprintln!("{}: image made twice, same bytes", arch.name);
            }
            made.push(archive);
        }
    }
    let mut names: Vec<String> = std::fs::read_dir(&dist)
        .map_err(|e| e.to_string())?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n != "SHA256SUMS")
        .collect();
    names.sort();
    let sums = run(Command::new("sha256sum").args(&names).current_dir(&dist))?;
    std::fs::write(dist.join("SHA256SUMS"), sums + "\n").map_err(|e| e.to_string())?;
    for file in made {
        println!("{}", file.display());
    }
    Ok(())
}

/// Fails unless the two files (two builds of the same thing) hold the same bytes.
fn same_bytes(first: &Path, second: &Path) -> Result<(), String> {
    if std::fs::read(first).ok() == std::fs::read(second).ok() {
        Ok(())
    } else {
        Err(format!(
            "two builds differ: {} and {}",
            first.display(),
            second.display()
        ))
    }
}

/// The .deb (cargo-deb) and the gzip .rpm (cargo-generate-rpm) of the binary just built for
/// `arch`, written into `out`.
fn package(arch: &Arch, out: &Path, env: &dyn Fn(&mut Command)) -> Result<[PathBuf; 2], String> {
    let mut deb = Command::new("cargo");
    deb.args([
        "deb",
        "--no-build",
        "--no-strip",
        "--package",
        "snirelay",
        "--profile",
        "dist",
    ]);
    deb.args(["--target", arch.target, "--output"]).arg(out);
    env(&mut deb);
    let deb = PathBuf::from(run(&mut deb)?);

    let mut rpm = Command::new("cargo");
    rpm.args(["generate-rpm", "--profile", "dist"]);
    rpm.args([
        "--target",
        arch.target,
        "--payload-compress",
        "gzip",
        "--output",
    ]);
    rpm.arg(out);
    env(&mut rpm);
    run(&mut rpm)?;
    Ok([deb, newest(out, &format!(".{}.rpm", arch.name))?])
}

/// The systemd units as the packages install them: the binary at /usr/bin.
fn package_units(root: &Path) -> Result<(), String> {
    let out = root.join("target/package/units");
    std::fs::create_dir_all(&out).map_err(|e| e.to_string())?;
    for (from, name) in [
        ("deploy/snirelay.service", "snirelay.service"),
        ("deploy/socket-activated/snirelay.socket", "snirelay.socket"),
    ] {
        let unit = std::fs::read_to_string(root.join(from)).map_err(|e| format!("{from}: {e}"))?;
        // The source's header says how to install it from a checkout; the package's says
        // how to change it where it is.
        let body: Vec<&str> = unit.lines().skip_while(|l| l.starts_with('#')).collect();
        let header = format!(
            "# {name} as the snirelay package installs it. Change it with `systemctl edit {name}`\n\
             # (a drop-in): an upgrade of the package replaces this file.\n"
        );
        let unit = header + &body.join("\n") + "\n";
        std::fs::write(out.join(name), unit.replace("/usr/local/bin/", "/usr/bin/"))
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// The most recently written file in `dir` whose name ends with `suffix`.
fn newest(dir: &Path, suffix: &str) -> Result<PathBuf, String> {
    std::fs::read_dir(dir)
        .map_err(|e| e.to_string())?
        .filter_map(Result::ok)
        .filter(|e| e.file_name().to_string_lossy().ends_with(suffix))
        .max_by_key(|e| e.metadata().and_then(|m| m.modified()).ok())
        .map(|e| e.path())
        .ok_or_else(|| format!("no *{suffix} in {}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A regression: on a fresh machine `dist` compiled for minutes and then failed with
    /// rustc's "can't find crate for `core`"; it now names every command first.
    #[test]
    fn the_release_names_what_a_fresh_machine_lacks_before_compiling() {
        let fresh = Found::default();
        assert_eq!(
            missing(&fresh, &["x86_64"], false),
            [
                "rustup target add x86_64-unknown-linux-musl",
                "apt-get install musl-tools",
                "cargo install cargo-deb --locked",
                "cargo install cargo-generate-rpm --locked",
            ]
        );
        let ready = Found {
            targets: vec![
                "x86_64-unknown-linux-gnu".into(),
                "x86_64-unknown-linux-musl".into(),
            ],
            programs: vec!["musl-gcc", "cargo-deb", "cargo-generate-rpm"],
        };
        assert!(missing(&ready, &["x86_64"], false).is_empty());
        assert_eq!(
            missing(&ready, &["x86_64", "aarch64"], false),
            [
                "rustup target add aarch64-unknown-linux-musl",
                "apt-get install gcc-aarch64-linux-gnu",
            ]
        );
        assert_eq!(
            missing(&ready, &["x86_64"], true),
            ["apt-get install podman runc"]
        );
    }
}
