//! `snirelay env`: what a client process needs to reach the allowed names through a CONNECT
//! listener instead of a hosts file: the proxy variables every common runtime reads, and
//! the settings of those that read none. Pure.

use std::fmt::Write;

/// Where clients never go through the relay: this machine, and the cloud metadata servers
/// (link-local on most clouds, 100.100.100.200 on Alibaba Cloud), which answer only from
/// inside the VM.
const LOCAL: &[&str] = &[
    "localhost",
    "127.0.0.0/8",
    "::1",
    "169.254.169.254",
    "100.100.100.200",
];

/// The lines for a CONNECT listener at `relay` (`host:port`), with `also` added to the
/// names and networks that bypass it. Refuses an address without a port, or with a scheme.
pub fn render(relay: &str, also: &[String]) -> Result<String, String> {
    let valid = relay
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if !valid || relay.contains('/') {
        return Err(format!(
            "--relay {relay}: give the CONNECT listener as HOST:PORT, like 10.20.0.5:3128 or [fd00::5]:3128"
        ));
    }
    let proxy = format!("http://{relay}");
    let bypass: Vec<&str> = LOCAL
        .iter()
        .copied()
        .chain(also.iter().map(String::as_str))
        .collect();
    let bypass = bypass.join(",");
    let (host, port) = relay.rsplit_once(':').unwrap_or((relay, ""));
    let java_bypass = bypass.replace(',', "|").replace("127.0.0.0/8", "127.*");
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# snirelay: the allowed names through the CONNECT listener at {relay}.\n\
         # For a shell or a profile script; in a systemd unit, Environment= lines without `export`.\n\
         # curl, Python (requests, google-auth, httpx), Go, Node (gaxios) and gRPC (C core: grpcio\n\
         # and the languages it wraps; grpc-go, grpc-js) read these. No name is looked up on the\n\
         # client: the relay resolves it.\n\
         export https_proxy={proxy}\n\
         export HTTPS_PROXY={proxy}\n\
         export no_proxy={bypass}\n\
         export NO_PROXY={bypass}\n\
         # Java reads none of them; start the JVM with:\n\
         #   -Dhttps.proxyHost={host} -Dhttps.proxyPort={port} -Dhttp.nonProxyHosts=\"{java_bypass}\"\n\
         # One gRPC channel only, instead of the environment: the channel argument\n\
         #   grpc.http_proxy={proxy}"
    );
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_variables_name_the_listener_and_keep_local_traffic_direct() {
        let text = render("10.20.0.5:3128", &[".corp.example".into()]).unwrap();
        for line in [
            "export https_proxy=http://10.20.0.5:3128",
            "export HTTPS_PROXY=http://10.20.0.5:3128",
            "export no_proxy=localhost,127.0.0.0/8,::1,169.254.169.254,100.100.100.200,.corp.example",
            "#   -Dhttps.proxyHost=10.20.0.5 -Dhttps.proxyPort=3128 -Dhttp.nonProxyHosts=\"localhost|127.*|::1|169.254.169.254|100.100.100.200|.corp.example\"",
            "#   grpc.http_proxy=http://10.20.0.5:3128",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        assert!(
            render("[fd00::5]:3128", &[])
                .unwrap()
                .contains("http://[fd00::5]:3128\n")
        );
    }

    #[test]
    fn an_address_without_a_port_or_with_a_scheme_is_refused() {
        for bad in [
            "10.20.0.5",
            "http://10.20.0.5:3128",
            "10.20.0.5:0",
            ":3128",
            "10.20.0.5:x",
        ] {
            assert!(render(bad, &[]).unwrap_err().contains("HOST:PORT"), "{bad}");
        }
    }
}
