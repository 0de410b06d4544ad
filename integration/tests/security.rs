//! Who may change the controller's tables: agents joined by token work end to end; a caller
//! without a certificate, with one from another CA or an expired one, with an expired or used-up
//! token, acting for another peer, or sending more than 256 KiB is refused with the status that
//! says why, and the tables stay as they were; an agent refuses a controller its token does not
//! pin; weftctl tells a user who is not root that the agent's socket is root-only.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::thread::sleep;
use std::time::Duration;

use prost::Message;
use weft_integration::scrape::{CONTROLLER_METRICS, scrape, series_value};
use weft_integration::{CONTROLLER_URL, Output, World, assert_reaches, exec, exec_for, locate_bin};
use weft_proto::v1::AttachRequest;

const CALL_TIMEOUT: Duration = Duration::from_secs(15);

fn mode_of(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Runs `weft-load ARGS...` in host1's namespace.
fn load(world: &World, args: &[String]) -> Output {
    let load = locate_bin("weft-load");
    let mut argv = vec![load.to_str().expect("UTF-8 path")];
    argv.extend(args.iter().map(String::as_str));
    exec_for(&world.host_ns(1), &argv, CALL_TIMEOUT)
}

/// weft-load's call, which must be refused with exactly `refusal` ("Code: message").
fn assert_refused(world: &World, args: &[String], refusal: &str) {
    let out = load(world, args);
    assert!(
        !out.success(),
        "weft-load {} was accepted: {}",
        args.join(" "),
        out.stdout
    );
    assert_eq!(
        out.stderr.trim(),
        format!("weft-load: refused: {refusal}"),
        "weft-load {}",
        args.join(" ")
    );
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

/// A third agent in host1's namespace trying to join as `host3` with `token`: it must exit
/// before it touches anything and write nothing in its state dir. Returns why it was refused.
fn join_refusal(world: &World, token: &str) -> String {
    let last = world.join_failure(1, token);
    let prefix = format!("weft-agent: joining {CONTROLLER_URL} refused: ");
    last.strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("not a refused join: {last}"))
        .to_string()
}

/// A CA of nobody's, and a client certificate from it naming host1, in `dir`.
fn alien_credentials(dir: &Path) {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyPair};
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    client_credentials(dir, &Issuer::new(ca, ca_key), CertificateParams::default());
}

/// A client certificate naming host1 from the controller's own CA, which expired in 2021, in
/// `dir`.
fn expired_credentials(world: &World, dir: &Path) {
    use rcgen::{CertificateParams, Issuer, KeyPair, date_time_ymd};
    let read = |name: &str| std::fs::read_to_string(world.controller_dir().join(name)).unwrap();
    let ca_key = KeyPair::from_pem(&read("ca.key")).unwrap();
    let issuer = Issuer::from_ca_cert_pem(&read("ca.pem"), ca_key).unwrap();
    let mut params = CertificateParams::default();
    params.not_before = date_time_ymd(2020, 1, 1);
    params.not_after = date_time_ymd(2021, 1, 1);
    client_credentials(dir, &issuer, params);
}

/// Writes `cert.pem` and `key.pem` in `dir`: a certificate of `params` naming host1.
fn client_credentials(
    dir: &Path,
    issuer: &rcgen::Issuer<rcgen::KeyPair>,
    params: rcgen::CertificateParams,
) {
    let key = rcgen::KeyPair::generate().unwrap();
    let mut params = params;
    params.subject_alt_names = vec![rcgen::SanType::DnsName("host1".try_into().unwrap())];
    let cert = params.signed_by(&key, issuer).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), key.serialize_pem()).unwrap();
}

/// The controller's count of refused TLS handshakes, from its `/metrics`.
fn handshakes_refused(world: &World) -> f64 {
    let series = "weft_controller_tls_handshakes_refused_total";
    let body = scrape(&world.controller_ns(), CONTROLLER_METRICS);
    series_value(&body, series).unwrap_or_else(|| panic!("no {series} in:\n{body}"))
}

/// A register as host1 with the certificate in `dir`, which the controller must refuse in the
/// TLS handshake, logging `why` (rustls's reason) and counting it.
fn assert_handshake_refused(world: &World, dir: &Path, why: &str) {
    let refused_before = handshakes_refused(world);
    let ca = world.controller_dir().join("ca.pem").display().to_string();
    let file = |name: &str| dir.join(name).display().to_string();
    let out = load(
        world,
        &strings(&[
            "--controller",
            CONTROLLER_URL,
            "--tls-ca",
            &ca,
            "--tls-cert",
            &file("cert.pem"),
            "--tls-key",
            &file("key.pem"),
            "register",
            "--peer",
            "host1",
            "--advertise-addr",
            "198.18.0.9",
        ]),
    );
    // TLS 1.3 refuses a client certificate after the client's side of the handshake: the
    // client sees its call cancelled or its connection broken (whichever comes first), the
    // controller logs why.
    let refused = out.stderr.trim();
    assert!(
        refused.starts_with("weft-load: refused: Cancelled: operation was canceled")
            || refused.starts_with("weft-load: refused: Unknown: transport error"),
        "a certificate the controller must refuse ({why}): {refused}"
    );
    let log = std::fs::read_to_string(world.controller_log()).expect("controller log");
    assert!(
        log.lines()
            .any(|l| l.contains("tls accept error") && l.contains(why)),
        "the controller did not log the refused certificate ({why}):\n{log}"
    );
    // The client may try the handshake more than once before it gives up.
    let refused_after = handshakes_refused(world);
    assert!(
        refused_after > refused_before,
        "the controller's count of refused handshakes stayed at {refused_before} ({why})"
    );
}

#[test]
fn agents_joined_by_token_reach_each_other_and_keep_their_certificate() {
    let mut world = World::new(2);
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    world.ctl(1, &["attach", "192.168.0.2/24", &format!("netns:{c1}")]);
    world.ctl(2, &["attach", "192.168.0.3/24", &format!("netns:{c2}")]);
    assert_reaches(&c1, "192.168.0.3");

    // weftctl run by a user who is not root, with the socket's directory open to it, is told
    // why it cannot connect.
    let socket = world.socket(1);
    let dir = socket.parent().expect("the socket's directory");
    let dir_mode = mode_of(dir);
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o711)).unwrap();
    let weftctl = locate_bin("weftctl");
    let socket = socket.to_str().expect("UTF-8 path");
    let out = exec(
        &world.host_ns(1),
        &[
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "env",
            "-u",
            "RUST_LOG",
            weftctl.to_str().expect("UTF-8 path"),
            "--socket",
            socket,
            "ps",
        ],
    );
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(dir_mode)).unwrap();
    assert_eq!(out.code, Some(1), "weftctl ps as nobody: {out:?}");
    assert_eq!(
        out.stderr.trim(),
        format!(
            "weftctl: cannot reach weft-agent at {socket}: Permission denied (os error 13): the \
             socket is root-only; run weftctl as root (sudo)"
        )
    );

    // Keys are root-only: the CA's, each agent's, and the sockets.
    assert_eq!(mode_of(&world.socket(1)), 0o600);
    assert_eq!(mode_of(&world.controller_dir().join("ca.key")), 0o600);
    assert_eq!(mode_of(&world.state_dir(1).join("key.pem")), 0o600);
    assert_eq!(mode_of(&world.admin_socket()) & 0o777, 0o600);

    // A restarted agent uses the certificate it stored: its token is used up.
    world.stop_agent(1);
    world.start_agent(1);
    world.ctl(1, &["detach", &format!("netns:{c1}")]);
    world.ctl(1, &["attach", "192.168.0.4/24", &format!("netns:{c1}")]);
    assert_reaches(&c2, "192.168.0.4");
}

#[test]
fn callers_without_the_right_identity_are_refused_and_change_nothing() {
    let mut world = World::new(2);
    let c1 = world.container(1, "c1");
    let c2 = world.container(2, "c2");
    world.ctl(1, &["attach", "192.168.0.2/24", &format!("netns:{c1}")]);
    world.ctl(2, &["attach", "192.168.0.3/24", &format!("netns:{c2}")]);
    world.ctl(2, &["dns-add", "10.2.0.99", "-h", "printer.weave.local"]);
    let before = world.controller_tables();
    assert_eq!(
        before["dns_records"][0]["peer"], "host2",
        "host2's DNS record: {before}"
    );
    let c2_mac = before["endpoints"]
        .as_array()
        .and_then(|eps| eps.iter().find(|ep| ep["peer"] == "host2"))
        .and_then(|ep| ep["mac"].as_str())
        .unwrap_or_else(|| panic!("no endpoint of host2 in {before}"))
        .to_string();
    let ca = world.controller_dir().join("ca.pem").display().to_string();
    let as_host1 = world.load_args(1);
    let with = |base: &[String], call: &[&str]| [base.to_vec(), strings(call)].concat();

    // No client certificate.
    let anonymous = strings(&["--controller", CONTROLLER_URL, "--tls-ca", &ca]);
    assert_refused(
        &world,
        &with(
            &anonymous,
            &["attach", "--peer", "host1", "--container", "netns:x"],
        ),
        "Unauthenticated: no client certificate: every call but Join needs one signed by the \
         controller's CA (start the agent with --join TOKEN, or --tls-cert and --tls-key)",
    );

    // A certificate naming host1, from a CA the controller does not know, or from its own CA
    // but expired: the handshake fails.
    let alien = tempfile::tempdir().expect("temp dir");
    alien_credentials(alien.path());
    assert_handshake_refused(
        &world,
        alien.path(),
        "invalid peer certificate: UnknownIssuer",
    );
    let expired = tempfile::tempdir().expect("temp dir");
    expired_credentials(&world, expired.path());
    assert_handshake_refused(
        &world,
        expired.path(),
        "invalid peer certificate: certificate expired: verification time",
    );

    // host1's own certificate, acting for host2.
    let denied = "PermissionDenied: peer host1 may not act for peer host2";
    for call in [
        &[
            "register",
            "--peer",
            "host2",
            "--advertise-addr",
            "198.18.0.9",
        ][..],
        &[
            "attach",
            "--peer",
            "host2",
            "--container",
            "netns:x",
            "--addr",
            "192.168.0.9/24",
        ],
        &[
            "detach",
            "--peer",
            "host2",
            "--container",
            &format!("netns:{c2}"),
        ],
        &["dump", "--peer", "host2"],
        &[
            "dns",
            "--peer",
            "host2",
            "--name",
            "printer.weave.local",
            "--ip",
            "10.2.0.99",
            "--remove",
        ],
    ] {
        assert_refused(&world, &with(&as_host1, call), denied);
    }
    // ... or naming host2's endpoint by its MAC while claiming to act for itself.
    assert_refused(
        &world,
        &with(
            &as_host1,
            &[
                "detach",
                "--peer",
                "host1",
                "--container",
                &format!("netns:{c2}"),
                "--only-mac",
                &c2_mac,
            ],
        ),
        &format!(
            "PermissionDenied: MAC {c2_mac} belongs to an endpoint of peer host2, not of host1"
        ),
    );

    // Too much in one request, even from a peer acting for itself.
    let mut flood = strings(&["attach", "--peer", "host1", "--container", "netns:x"]);
    for i in 0..65 {
        flood.extend(["--addr".to_string(), format!("10.32.1.{i}/12")]);
    }
    assert_refused(
        &world,
        &[as_host1.clone(), flood].concat(),
        "InvalidArgument: addrs: 65 given, at most 64 per request",
    );

    // Join tokens: used up, expired, or made up.
    let used = world.join_token(2).to_string();
    let id = |token: &str| token.split('.').next().unwrap_or_default().to_string();
    assert_eq!(
        join_refusal(&world, &used),
        format!("join token {} was already used (by host2)", id(&used))
    );
    let short = world.token("1s");
    sleep(Duration::from_secs(2));
    let expired = join_refusal(&world, &short);
    let ago = expired
        .strip_prefix(&format!("join token {} expired ", id(&short)))
        .and_then(|rest| rest.strip_suffix("s ago"))
        .unwrap_or_else(|| panic!("not refused as expired: {expired}"));
    assert!(ago.parse::<u64>().is_ok_and(|s| s <= 2), "{expired}");
    let mut forged: Vec<String> = used.split('.').map(str::to_string).collect();
    forged[0] = "0123456789abcdef".into();
    assert_eq!(
        join_refusal(&world, &forged.join(".")),
        "join token 0123456789abcdef is not known to this controller"
    );

    assert_eq!(
        world.controller_tables(),
        before,
        "the refused calls changed the controller's tables"
    );
    assert_reaches(&c1, "192.168.0.3");
}

#[test]
fn an_agent_refuses_a_controller_its_token_does_not_pin() {
    let world = World::new(1);
    let before = world.controller_tables();
    // A token for this controller, edited to pin another CA: as if a man in the middle, with a
    // CA of his own, answered at the controller's URL. The agent ends the handshake before it
    // sends the token.
    let mut token: Vec<String> = world.token("10m").split('.').map(str::to_string).collect();
    let pin = "ab".repeat(32);
    token[2] = format!("sha256:{pin}");
    assert_eq!(
        world.join_failure(1, &token.join(".")),
        format!(
            "weft-agent: joining {CONTROLLER_URL} refused: unexpected error: the controller's CA \
             is not the one the join token pins (sha256:{pin})"
        )
    );
    assert_eq!(world.controller_tables(), before);
}

/// The largest request the controller decodes (its MAX_REQUEST_BYTES, the README's 256 KiB).
const MAX_REQUEST_BYTES: usize = 256 << 10;

/// An attach from host1 of 65 ADDRs (one too many) that encodes to exactly `len` bytes.
fn attach_of_len(len: usize) -> AttachRequest {
    let mut request = AttachRequest {
        peer: "host1".into(),
        container_id: "netns:x".into(),
        addrs: vec!["1".repeat(4000); 65],
        dns_name: String::new(),
        ..Default::default()
    };
    // Lengthen the last ADDR until the whole is `len` (its length prefix may grow a byte).
    while request.encoded_len() < len {
        let missing = len - request.encoded_len();
        request.addrs[64].push_str(&"1".repeat(missing));
    }
    assert_eq!(request.encoded_len(), len, "cannot encode to {len} bytes");
    request
}

#[test]
fn requests_are_decoded_up_to_256_kib() {
    let world = World::new(1);
    let before = world.controller_tables();
    let call = |request: AttachRequest| {
        let mut args = world.load_args(1);
        args.extend(strings(&[
            "attach",
            "--peer",
            "host1",
            "--container",
            "netns:x",
        ]));
        for addr in request.addrs {
            args.extend(["--addr".to_string(), addr]);
        }
        args
    };
    // At the limit the controller reads the request, and refuses it for what it asks.
    assert_refused(
        &world,
        &call(attach_of_len(MAX_REQUEST_BYTES)),
        "InvalidArgument: addrs: 65 given, at most 64 per request",
    );
    assert_refused(
        &world,
        &call(attach_of_len(MAX_REQUEST_BYTES + 1)),
        &format!(
            "OutOfRange: Error, decoded message length too large: found {} bytes, the limit is: \
             {MAX_REQUEST_BYTES} bytes",
            MAX_REQUEST_BYTES + 1
        ),
    );
    assert_eq!(world.controller_tables(), before);
}
