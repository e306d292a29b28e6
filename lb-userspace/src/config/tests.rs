use super::*;

const GOOD: &str = r#"
[dataplane]
interface = "eth0"
source_v4 = "198.51.100.10"
source_v6 = "2001:db8::10"
flow_table_entries = 100000
maglev_table_size = 65537

[[vip]]
name = "web"
address = "203.0.113.10"
port = 80
protocol = "tcp"
backends = [ { address = "198.51.100.21", weight = 100 }, { address = "198.51.100.22" } ]
[vip.health_check]
protocol = "http"
path = "/health"
expect = "200-299,302"

[[vip]]
address = "2001:db8:203::10"
port = 443
hash = "source-address"
deregistration_delay = "5s"
backends = [ { address = "2001:db8::21" } ]
"#;

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, "test.toml")
}

/// The error for `GOOD` with `from` replaced by `to`.
fn error_with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "{from:?} not in the sample");
    parse(&GOOD.replacen(from, to, 1))
        .expect_err("must fail")
        .to_string()
}

#[test]
fn good_config() {
    let c = parse(GOOD).unwrap();
    assert_eq!(c.dataplane.interface.as_deref(), Some("eth0"));
    assert_eq!(c.vips.len(), 2);
    let web = &c.vips[0];
    assert_eq!(web.name, "web");
    assert_eq!(web.id.to_string(), "203.0.113.10:80/tcp");
    assert_eq!(web.backends[1].weight, DEFAULT_WEIGHT);
    assert_eq!(web.backends[0].health.kind, ProbeKind::Http);
    assert_eq!(web.backends[0].health.expect, vec![(200, 299), (302, 302)]);
    assert_eq!(web.backends[0].health.port, 80);
    assert_eq!(web.deregistration_delay, DEFAULT_DEREGISTRATION_DELAY);
    let v6 = &c.vips[1];
    assert_eq!(v6.name, "[2001:db8:203::10]:443/tcp");
    assert_eq!(v6.hash, HashMode::SourceAddress);
    assert_eq!(v6.deregistration_delay, Duration::from_secs(5));
    assert_eq!(v6.backends[0].health.kind, ProbeKind::Tcp);
    assert_eq!(v6.backends[0].health.interval, health_defaults::INTERVAL);
    assert_eq!(
        c.daemon.metrics_address,
        Some("127.0.0.1:9469".parse().unwrap())
    );
}

#[test]
fn every_error_names_field_value_and_problem() {
    let cases = [
        (
            "\"203.0.113.10\"",
            "\"203.0.113.300\"",
            "vip[0].address: \"203.0.113.300\" is not an IP address",
        ),
        (
            "port = 80",
            "port = 70000",
            "vip[0].port: 70000 is out of range 0-65535",
        ),
        (
            "port = 80",
            "port = -1",
            "vip[0].port: -1 is out of range 0-65535",
        ),
        (
            "protocol = \"tcp\"",
            "protocol = \"sctp\"",
            "vip[0].protocol: \"sctp\" is not tcp or udp",
        ),
        (
            "maglev_table_size = 65537",
            "maglev_table_size = 65536",
            "dataplane.maglev_table_size: 65536 is not prime; use 65537",
        ),
        (
            "maglev_table_size = 65537",
            "maglev_table_size = 101",
            "dataplane.maglev_table_size: 101 is too small for the 2 backends of VIP 203.0.113.10:80/tcp: Maglev needs at least 100 entries per backend; use 211",
        ),
        (
            "{ address = \"2001:db8::21\" }",
            "{ address = \"198.51.100.30\" }",
            "vip[1].backends[0].address: IPv4 backend 198.51.100.30 cannot carry IPv6 VIP [2001:db8:203::10]:443/tcp: IPv6-in-IPv4 encapsulation is not supported; use an IPv6 backend address",
        ),
        (
            "source_v6 = \"2001:db8::10\"\n",
            "",
            "vip[1].backends[0].address: IPv6 backend 2001:db8::21 needs dataplane.source_v6 (the outer source address)",
        ),
        (
            "{ address = \"198.51.100.22\" }",
            "{ address = \"198.51.100.21\" }",
            "vip[0].backends[1].address: duplicate backend 198.51.100.21 in VIP 203.0.113.10:80/tcp",
        ),
        (
            "weight = 100",
            "weight = 2000000",
            "vip[0].backends[0].weight: 2000000 is out of range 0-1000000",
        ),
        (
            "hash = \"source-address\"",
            "hash = \"round-robin\"",
            "vip[1].hash: \"round-robin\" is not \"5-tuple\" or \"source-address\"",
        ),
        (
            "deregistration_delay = \"5s\"",
            "deregistration_delay = \"5 parsecs\"",
            "vip[1].deregistration_delay: \"5 parsecs\" is not a duration like \"500ms\", \"2s\", \"1m\"",
        ),
        (
            "expect = \"200-299,302\"",
            "expect = \"299-200\"",
            "vip[0].health_check.expect: \"299-200\" in \"299-200\" is not a status code or range like 200-299",
        ),
        (
            "path = \"/health\"",
            "path = \"health\"",
            "vip[0].health_check.path: \"health\" must start with / and have no spaces",
        ),
        (
            "source_v4 = \"198.51.100.10\"",
            "source_v4 = \"2001:db8::1\"",
            "dataplane.source_v4: \"2001:db8::1\" is not an IPv4 address",
        ),
        (
            "interface = \"eth0\"",
            "interface = \"a/b\"",
            "dataplane.interface: \"a/b\" is not a valid interface name",
        ),
    ];
    for (from, to, want) in cases {
        assert_eq!(error_with(from, to), want, "replacing {from:?} with {to:?}");
    }
}

#[test]
fn unknown_keys_and_syntax_errors_give_the_line() {
    let e = error_with("flow_table_entries = 100000", "flow_table_entrys = 100000");
    assert!(
        e.starts_with("test.toml:6: unknown field `flow_table_entrys`"),
        "{e}"
    );
    assert!(!e.contains('\n'));
    let e = error_with("[[vip]]\nname", "[[vip]\nname");
    assert!(e.starts_with("test.toml:"), "{e}");
    assert!(!e.contains('\n'));
}

#[test]
fn duplicate_vip() {
    let text = format!("{GOOD}\n[[vip]]\naddress = \"203.0.113.10\"\nport = 80\n");
    assert_eq!(
        parse(&text).unwrap_err().to_string(),
        "vip[2].address: duplicate VIP 203.0.113.10:80/tcp (also vip[0])"
    );
    // Same address and port, other protocol: a different VIP.
    let text =
        format!("{GOOD}\n[[vip]]\naddress = \"203.0.113.10\"\nport = 80\nprotocol = \"udp\"\n");
    assert!(parse(&text).is_ok());
}

#[test]
fn any_port_vip_needs_a_health_check_port() {
    let text = "[dataplane]\nsource_v4 = \"198.51.100.10\"\n[[vip]]\naddress = \"203.0.113.10\"\nport = 0\nbackends = [{ address = \"198.51.100.21\" }]\n";
    assert_eq!(
        parse(text).unwrap_err().to_string(),
        "vip[0].health_check.port: required for a VIP with port 0 (every port): which port should be probed?"
    );
    let ok = text.replace("port = 0\n", "port = 0\nhealth_check = { port = 22 }\n");
    assert_eq!(parse(&ok).unwrap().vips[0].backends[0].health.port, 22);
}

#[test]
fn health_overrides_layer_global_vip_backend() {
    let text = r#"
[dataplane]
source_v4 = "198.51.100.10"
[health_check]
interval = "10s"
timeout = "3s"
[[vip]]
address = "203.0.113.10"
port = 80
health_check = { protocol = "http", path = "/ping" }
backends = [
  { address = "198.51.100.21" },
  { address = "198.51.100.22", health_check = { port = 8080, timeout = "1s" } },
]
"#;
    let c = parse(text).unwrap();
    let (a, b) = (&c.vips[0].backends[0].health, &c.vips[0].backends[1].health);
    assert_eq!(
        (a.kind, a.port, a.path.as_str(), a.interval, a.timeout),
        (
            ProbeKind::Http,
            80,
            "/ping",
            Duration::from_secs(10),
            Duration::from_secs(3)
        )
    );
    assert_eq!(
        (b.kind, b.port, b.path.as_str(), b.interval, b.timeout),
        (
            ProbeKind::Http,
            8080,
            "/ping",
            Duration::from_secs(10),
            Duration::from_secs(1)
        )
    );
    let bad = text.replace("timeout = \"1s\"", "timeout = \"20s\"");
    assert_eq!(
        parse(&bad).unwrap_err().to_string(),
        "vip[0].backends[1].health_check.timeout: 20s must be above zero and at most the interval (10s)"
    );
}

#[test]
fn limits_are_checked() {
    let text = "[dataplane]\nmax_vips = 1\nsource_v4 = \"198.51.100.10\"\n[[vip]]\naddress = \"203.0.113.10\"\nport = 80\n[[vip]]\naddress = \"203.0.113.11\"\nport = 80\n";
    assert_eq!(
        parse(text).unwrap_err().to_string(),
        "dataplane.max_vips: 2 VIPs are configured but max_vips is 1"
    );
}

#[test]
fn vip_id_parsing() {
    assert_eq!(
        "203.0.113.10:80/tcp".parse::<VipId>().unwrap().to_string(),
        "203.0.113.10:80/tcp"
    );
    assert_eq!(
        "[2001:db8::1]:53/udp".parse::<VipId>().unwrap().to_string(),
        "[2001:db8::1]:53/udp"
    );
    assert_eq!(
        "203.0.113.10:80".parse::<VipId>().unwrap().protocol,
        Protocol::Tcp
    );
    assert!("203.0.113.10/tcp".parse::<VipId>().is_err());
    assert!("203.0.113.10:80/icmp".parse::<VipId>().is_err());
}

#[test]
fn maglev_variant() {
    assert_eq!(
        parse(GOOD).unwrap().dataplane.maglev_variant,
        MaglevVariant::Lockstep
    );
    let c = parse(&GOOD.replace(
        "[dataplane]\n",
        "[dataplane]\nmaglev_variant = \"classic\"\n",
    ))
    .unwrap();
    assert_eq!(c.dataplane.maglev_variant, MaglevVariant::Classic);
    assert_eq!(
        error_with("[dataplane]\n", "[dataplane]\nmaglev_variant = \"ring\"\n"),
        "dataplane.maglev_variant: \"ring\" is not \"lockstep\" or \"classic\""
    );
}

#[test]
fn long_values_are_cut_in_errors() {
    let long = "9".repeat(5000);
    let e = error_with("\"203.0.113.10\"", &format!("\"{long}\""));
    assert!(e.len() < 200, "{e}");
    assert!(
        e.ends_with("... (5000 characters) is not an IP address"),
        "{e}"
    );
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config { cases: 2000, ..Default::default() })]

    /// A valid file with random bytes inserted or removed anywhere parses or fails with one
    /// line; never a panic.
    #[test]
    fn mutated_files_fail_cleanly(at in 0usize..GOOD.len(), cut in 0usize..40, insert in "[ -~\n\\[\\]=\"{}]{0,20}") {
        let mut text = GOOD.to_owned();
        let at = (0..=at).rev().find(|i| text.is_char_boundary(*i)).unwrap_or(0);
        let end = (at + cut).min(text.len());
        let end = (end..=text.len()).find(|i| text.is_char_boundary(*i)).unwrap_or(text.len());
        text.replace_range(at..end, &insert);
        if let Err(e) = Config::parse(&text, "fuzz.toml") {
            let line = e.to_string();
            proptest::prop_assert!(!line.contains('\n') && !e.message.trim().is_empty(), "{:?}", line);
        }
    }

    /// Arbitrary text: never a panic, one-line errors.
    #[test]
    fn arbitrary_text_fails_cleanly(text in "\\PC{0,300}") {
        if let Err(e) = Config::parse(&text, "fuzz.toml") {
            proptest::prop_assert!(!e.to_string().contains('\n') && !e.message.trim().is_empty());
        }
    }
}

#[test]
fn the_file_schema_round_trips_through_the_same_validation() {
    for text in [
        GOOD.to_owned(),
        GOOD.replace(
            "port = 443\n",
            "port = 0\nhealth_check = { protocol = \"none\" }\n",
        ),
    ] {
        let c = parse(&text).unwrap();
        let saved = c.to_toml();
        let back = Config::parse(&saved, "saved").unwrap_or_else(|e| panic!("{e}\n{saved}"));
        assert_eq!(back, c, "{saved}");
    }
    // A backend with its own health check keeps it; one without inherits the VIP's.
    let text = GOOD.replace(
        "{ address = \"198.51.100.22\" }",
        "{ address = \"198.51.100.22\", health_check = { port = 8080 } }",
    );
    let c = parse(&text).unwrap();
    let f = c.to_file();
    assert!(f.vips[0].backends[0].health_check.is_none());
    assert_eq!(
        f.vips[0].backends[1].health_check.as_ref().unwrap().port,
        Some(8080)
    );
    assert_eq!(Config::from_file(&f).unwrap(), c);
}

#[test]
fn run_time_errors_name_vips_and_backends_by_address() {
    let e = error_with("weight = 100", "weight = 2000000");
    assert_eq!(
        e,
        "vip[0].backends[0].weight: 2000000 is out of range 0-1000000"
    );
    let e = parse(&GOOD.replacen("weight = 100", "weight = 2000000", 1)).unwrap_err();
    assert_eq!(
        e.for_operator(),
        "VIP 203.0.113.10:80/tcp backend 198.51.100.21 weight: 2000000 is out of range 0-1000000"
    );
    let e = parse(&GOOD.replacen("name = \"web\"", "name = \"a\\nb\"", 1)).unwrap_err();
    assert_eq!(
        e.for_operator(),
        "VIP 203.0.113.10:80/tcp name: \"a\\nb\" must be 1 to 64 printable characters without quotes or backslashes"
    );
}

#[test]
fn every_error_has_text() {
    for text in [
        "[dataplane]\nmax_vips = ".to_owned(),
        "# a comment with a NUL \0 byte\n".to_owned(),
        "[dataplane]\nmax_vips = 4\n\0".to_owned(),
        "[[vip]]\naddress = \"203.0.113.10\"\nport = 80\n[[vip]".to_owned(),
    ] {
        let e = parse(&text).expect_err("must fail");
        let line = e.to_string();
        let (_, message) = line.split_once(": ").unwrap_or(("", ""));
        assert!(!message.trim().is_empty(), "{text:?} gave {line:?}");
        assert!(!line.contains('\n'), "{line:?}");
    }
}

#[test]
fn https_and_grpc_checks() {
    let c = parse(
        &GOOD
            .replace(
                "protocol = \"http\"",
                "protocol = \"grpc\"\ngrpc_service = \"web\"",
            )
            .replace("expect = \"200-299,302\"\n", ""),
    )
    .unwrap();
    let h = &c.vips[0].backends[0].health;
    assert_eq!(
        (h.kind, h.expect.clone(), h.grpc_service.as_str()),
        (ProbeKind::Grpc, vec![(0, 0)], "web")
    );
    assert_eq!(
        error_with("protocol = \"http\"", "protocol = \"grpc\""),
        "vip[0].health_check.expect: 200-299 is outside 0-16, the gRPC statuses"
    );
    let c = parse(&GOOD.replace(
        "protocol = \"http\"",
        "protocol = \"https\"\ntls_verify = false\nhost = \"web.example\"",
    ))
    .unwrap();
    let h = &c.vips[0].backends[0].health;
    assert_eq!((h.kind, h.tls_verify), (ProbeKind::Https, false));
    assert_eq!(Config::parse(&c.to_toml(), "saved").unwrap(), c);
    assert_eq!(
        error_with(
            "protocol = \"http\"",
            "protocol = \"http\"\nca_file = \"ca.pem\""
        ),
        "vip[0].health_check.ca_file: \"ca.pem\" must be an absolute path"
    );
}

const NAT: &str = r#"
[dataplane]
interface = "eth0"
snat_v4 = ["198.18.0.10", "198.18.0.11"]
snat_v6 = "2001:db8:18::10"
snat_ports = "20000-29999"
nat_table_entries = 4096

[[vip]]
name = "tasks"
address = "203.0.113.20"
port = 80
forwarding = "nat"
idle_timeout = "60s"
backends = [
  { address = "198.51.100.20", port = 32768 },
  { address = "198.51.100.20", port = 32769, health_check = { protocol = "http" } },
  { address = "198.51.100.21" },
]

[[vip]]
address = "203.0.113.21"
port = 53
protocol = "udp"
forwarding = "nat"
nat_source = "client"
health_check = { protocol = "none" }
backends = [ { address = "198.51.100.30", port = 5353 } ]
"#;

#[test]
fn nat_vips_take_targets_with_ports_and_round_trip() {
    let c = parse(NAT).unwrap();
    let d = &c.dataplane;
    assert_eq!(d.snat_v4.len(), 2);
    assert_eq!(d.snat_v6.len(), 1);
    assert_eq!(d.snat_ports, (20000, 29999));
    assert_eq!(d.limits.nat_table_entries, 4096);
    let tasks = &c.vips[0];
    assert_eq!(tasks.forwarding, Forwarding::Nat);
    assert_eq!(tasks.nat_source, NatSource::Snat);
    assert_eq!(tasks.idle_timeout, std::time::Duration::from_secs(60));
    let ports: Vec<u16> = tasks.backends.iter().map(|b| b.port).collect();
    assert_eq!(
        ports,
        [32768, 32769, 80],
        "a target's port defaults to the VIP's"
    );
    // Health checks probe the target's own port.
    let probes: Vec<u16> = tasks.backends.iter().map(|b| b.health.port).collect();
    assert_eq!(probes, [32768, 32769, 80]);
    assert_eq!(c.vips[1].nat_source, NatSource::Client);
    assert_eq!(c.vips[1].idle_timeout, std::time::Duration::from_secs(120));
    let saved = c.to_toml();
    assert_eq!(Config::parse(&saved, "saved").unwrap(), c, "{saved}");
}

#[test]
fn nat_settings_are_refused_where_they_do_not_apply() {
    let dsr_port = parse(&GOOD.replacen(
        "{ address = \"198.51.100.21\"",
        "{ address = \"198.51.100.21\", port = 8080",
        1,
    ))
    .unwrap_err();
    assert!(
        dsr_port
            .to_string()
            .contains("backends[0].port: a backend port needs forwarding"),
        "{dsr_port}"
    );
    let dup = parse(&NAT.replace("port = 32769, health", "port = 32768, health")).unwrap_err();
    assert!(
        dup.to_string()
            .contains("duplicate target 198.51.100.20:32768"),
        "{dup}"
    );
    let no_snat =
        parse(&NAT.replace("snat_v4 = [\"198.18.0.10\", \"198.18.0.11\"]\n", "")).unwrap_err();
    assert!(
        no_snat.to_string().contains("needs dataplane.snat_v4"),
        "{no_snat}"
    );
    let family = parse(&NAT.replace("198.51.100.30", "2001:db8::30")).unwrap_err();
    assert!(
        family.to_string().contains("must be of the family"),
        "{family}"
    );
    let snat_vip = parse(&NAT.replace("\"198.18.0.11\"]", "\"203.0.113.20\"]")).unwrap_err();
    assert!(
        snat_vip.to_string().contains("it is a VIP address"),
        "{snat_vip}"
    );
    let source = parse(&GOOD.replacen("port = 80\n", "port = 80\nnat_source = \"client\"\n", 1))
        .unwrap_err();
    assert!(
        source.to_string().contains("applies to NAT VIPs only"),
        "{source}"
    );
}

#[test]
fn targets_parse_with_and_without_ports() {
    let t: Target = "198.51.100.20:32768".parse().unwrap();
    assert_eq!(
        (t.address.to_string(), t.port),
        ("198.51.100.20".to_owned(), 32768)
    );
    assert_eq!(t.to_string(), "198.51.100.20:32768");
    let t: Target = "[2001:db8::20]:3000".parse().unwrap();
    assert_eq!(t.to_string(), "[2001:db8::20]:3000");
    let t: Target = "2001:db8::20".parse().unwrap();
    assert_eq!((t.port, t.to_string()), (0, "2001:db8::20".to_owned()));
    assert!("198.51.100.20:99999".parse::<Target>().is_err());
}

#[test]
fn a_nat_target_added_at_run_time_is_probed_on_its_own_port() {
    let c = parse(NAT).unwrap();
    let mut f = c.to_file();
    f.vips[0].backends.push(file::BackendFile {
        address: Some("198.51.100.22".parse().unwrap()),
        port: Some(32790),
        ..Default::default()
    });
    let c = Config::from_file(&f).unwrap();
    let b = c.vips[0].backends.last().unwrap();
    assert_eq!((b.port, b.health.port), (32790, 32790));
}

#[test]
fn every_example_configuration_is_valid() {
    for (name, text) in [
        ("lab.toml", include_str!("../../../examples/lab.toml")),
        ("nat.toml", include_str!("../../../examples/nat.toml")),
        (
            "containers.toml",
            include_str!("../../../examples/containers.toml"),
        ),
    ] {
        let c = Config::parse(text, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(!c.vips.is_empty(), "{name}");
    }
}

#[test]
fn two_docker_hosts_may_not_share_a_name() {
    let two = |a: &str, b: &str| {
        format!(
            "{GOOD}\n[[discovery.docker]]\nendpoint = \"unix:///run/a.sock\"\nhost_address = \"{a}\"\n\
             [[discovery.docker]]\nendpoint = \"unix:///run/b.sock\"\nhost_address = \"{b}\"\n"
        )
    };
    assert!(parse(&two("198.51.100.31", "198.51.100.32")).is_ok());
    // Named by their host address by default: the same address twice is the same name.
    let e = parse(&two("198.51.100.31", "198.51.100.31"))
        .expect_err("must fail")
        .to_string();
    assert!(
        e.contains("discovery.docker[1].name") && e.contains("discovery.docker[0]"),
        "{e}"
    );
    assert_eq!(e.lines().count(), 1, "{e}");
}
