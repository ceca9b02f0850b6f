//! The resolv.conf files of the machines the relay runs on, as written there (Alibaba Cloud
//! ECS's dhclient, AWS EC2, Google Compute Engine, systemd-resolved, and a file with every
//! option glibc knows): without `resolver.nameservers` the relay reads /etc/resolv.conf at
//! start-up, so an option its parser refused would keep it from starting there.

use hickory_resolver::system_conf::parse_resolv_conf;
use std::net::IpAddr;
use std::path::Path;

fn nameservers(file: &str) -> Vec<IpAddr> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/resolv")
        .join(file);
    let (config, _) =
        parse_resolv_conf(std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{file}: {e}"));
    let mut ips: Vec<IpAddr> = config.name_servers.iter().map(|s| s.ip).collect();
    ips.dedup();
    ips
}

#[test]
fn the_clouds_resolv_conf_files_parse_with_their_nameservers() {
    let ip = |s: &str| s.parse::<IpAddr>().unwrap();
    assert_eq!(
        nameservers("alibaba-ecs.conf"),
        [ip("100.100.2.136"), ip("100.100.2.138")]
    );
    assert_eq!(nameservers("aws-ec2.conf"), [ip("10.0.0.2")]);
    assert_eq!(nameservers("gce.conf"), [ip("169.254.169.254")]);
    assert_eq!(nameservers("systemd-resolved.conf"), [ip("127.0.0.53")]);
    assert_eq!(
        nameservers("options-galore.conf"),
        [ip("10.20.0.2"), ip("fd00::2")]
    );
}

#[test]
fn a_resolv_conf_without_nameservers_is_an_error() {
    assert!(parse_resolv_conf(b"# nothing here\noptions rotate\n").is_err());
}
