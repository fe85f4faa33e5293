//! Lookups and policy on MaxMind's own test databases (../shared/data/mmdb, from
//! github.com/maxmind/MaxMind-DB; the networks they hold are listed in `source-data/`).

use std::path::PathBuf;

use roost_engine::{Annotator, Class, Inspector, PathClass, RequestContext, RequestEvent};
use roost_event::Timestamp;
use roost_geo::{GeoAnnotator, GeoConfig, GeoDb, GeoHandle, GeoInspector, GeoPolicy, GeoRule};

fn mmdb(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mmdb").join(name)
}

fn config() -> GeoConfig {
    GeoConfig {
        city_db: Some(mmdb("GeoIP2-City-Test.mmdb")),
        country_db: Some(mmdb("GeoLite2-Country-Test.mmdb")),
        asn_db: Some(mmdb("GeoLite2-ASN-Test.mmdb")),
        ..GeoConfig::default()
    }
}

#[test]
fn city_country_and_asn_lookups() {
    let db = GeoDb::open(&config()).unwrap();
    let london = db.lookup("81.2.69.142".parse().unwrap());
    assert_eq!(london.country.as_deref(), Some("GB"));
    assert_eq!(london.city.as_deref(), Some("London"));
    let se = db.lookup("89.160.20.128".parse().unwrap());
    assert_eq!((se.country.as_deref(), se.city.as_deref()), (Some("SE"), Some("Linköping")));
    let telstra = db.lookup("1.128.0.1".parse().unwrap());
    assert_eq!(telstra.asn, Some(1221));
    assert_eq!(telstra.as_org.as_deref(), Some("Telstra Pty Ltd"));
    assert_eq!(telstra.describe(), "AS1221 Telstra Pty Ltd");
    assert_eq!(db.asn("1.0.0.1".parse().unwrap()), Some(15169));
    // IPv6 and unknown addresses.
    let jp = db.lookup("2001:218::1".parse().unwrap());
    assert_eq!(jp.country.as_deref(), Some("JP"));
    let none = db.lookup("198.51.100.1".parse().unwrap());
    assert_eq!(none, Default::default());
}

#[test]
fn country_db_alone_and_isp_db_as_asn_source() {
    let cfg = GeoConfig {
        country_db: Some(mmdb("GeoIP2-Country-Test.mmdb")),
        asn_db: Some(mmdb("GeoIP2-ISP-Test.mmdb")),
        ..GeoConfig::default()
    };
    let db = GeoDb::open(&cfg).unwrap();
    assert_eq!(db.lookup("81.2.69.160".parse().unwrap()).country.as_deref(), Some("GB"));
    assert_eq!(db.asn("1.128.0.1".parse().unwrap()), Some(1221));
}

#[test]
fn broken_or_wrong_databases_are_refused() {
    let broken = GeoConfig { city_db: Some(mmdb("GeoIP2-City-Test-Invalid-Node-Count.mmdb")), ..GeoConfig::default() };
    assert!(GeoDb::open(&broken).is_err());
    let wrong = GeoConfig { asn_db: Some(mmdb("GeoIP2-City-Test.mmdb")), ..GeoConfig::default() };
    let e = GeoDb::open(&wrong).unwrap_err().to_string();
    assert!(e.contains("not an ASN"), "{e}");
    let missing = GeoConfig { asn_db: Some(mmdb("nope.mmdb")), ..GeoConfig::default() };
    assert!(GeoDb::open(&missing).is_err());
}

#[test]
fn policy_from_config_becomes_evidence() {
    let rules: Vec<GeoRule> = toml::from_str::<toml::Table>(
        r#"
        [[policy]]
        name = "hosting ASN on a login path"
        asns = [15169, 1221]
        paths = '^/(wp-login\.php|login|user/login)'
        methods = ["POST"]
        penalty = 0.5

        [[policy]]
        name = "embargoed country"
        countries = ["se"]
        penalty = 2
        verdict = "dubious"
        ttl = "10m"
        "#,
    )
    .unwrap()["policy"]
        .clone()
        .try_into()
        .unwrap();
    let policy = GeoPolicy::compile(&rules).unwrap();
    assert!(policy.has_per_client() && policy.has_per_request());
    let handle = GeoHandle::open(config()).unwrap();

    let ann = GeoAnnotator::new(handle.clone(), policy.clone());
    let mut out = Vec::new();
    ann.annotate("89.160.20.128".parse().unwrap(), Timestamp(0), &mut out);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].detail, "embargoed country: AS29518 Bredband2 AB, Linköping, SE");
    assert_eq!(out[0].verdict.map(|v| v.0), Some(Class::Dubious));
    out.clear();
    ann.annotate("81.2.69.142".parse().unwrap(), Timestamp(0), &mut out);
    assert!(out.is_empty());

    let mut insp = GeoInspector::new(handle, policy);
    let ev = |method: &str, path: &str| RequestEvent {
        client: "1.128.0.1".parse().unwrap(),
        method: method.to_owned().into(),
        path: path.to_owned().into(),
        status: 200,
        time: Timestamp(0),
        host: None,
        query: None,
        protocol: "HTTP/1.1".into(),
        bytes: 0,
        request_time: None,
        referer: None,
        user_agent: None,
    };
    let inspect = |insp: &mut GeoInspector, e: &RequestEvent<'_>| {
        let ctx = RequestContext {
            subject: "1.128.0.1/32".parse().unwrap(),
            event: e,
            path_class: PathClass::Page,
            now: Timestamp(0),
        };
        let mut out = Vec::new();
        insp.inspect(&ctx, &mut out);
        out
    };
    let hit = inspect(&mut insp, &ev("POST", "/wp-login.php"));
    assert_eq!(hit.len(), 1);
    assert_eq!(hit[0].detail, "hosting ASN on a login path: AS1221 Telstra Pty Ltd on /wp-login.php");
    assert_eq!(hit[0].penalty, 0.5);
    assert!(inspect(&mut insp, &ev("GET", "/wp-login.php")).is_empty());
    assert!(inspect(&mut insp, &ev("POST", "/search")).is_empty());
}

#[test]
fn bad_policy_is_refused() {
    let bad = |r: GeoRule| GeoPolicy::compile(&[r]).is_err();
    assert!(bad(GeoRule { name: "x".into(), ..GeoRule::default() }));
    assert!(bad(GeoRule { name: "x".into(), countries: vec!["Sweden".into()], ..GeoRule::default() }));
    assert!(bad(GeoRule { name: "x".into(), asns: vec![1], paths: Some("(".into()), ..GeoRule::default() }));
    assert!(bad(GeoRule { name: "x".into(), asns: vec![1], verdict: Some(Class::Bad), ..GeoRule::default() }));
}

#[test]
fn reload_picks_up_a_replaced_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("asn.mmdb");
    std::fs::copy(mmdb("GeoLite2-ASN-Test.mmdb"), &path).unwrap();
    let handle = GeoHandle::open(GeoConfig { asn_db: Some(path.clone()), ..GeoConfig::default() }).unwrap();
    assert!(!handle.reload_if_changed().unwrap());
    assert_eq!(handle.load().asn("1.128.0.1".parse().unwrap()), Some(1221));
    // Replace it the way geoipupdate does: write a new file, rename it into place.
    let tmp = dir.path().join("asn.mmdb.new");
    std::fs::copy(mmdb("GeoIP2-ISP-Test.mmdb"), &tmp).unwrap();
    let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
    std::fs::File::options().write(true).open(&tmp).unwrap().set_modified(later).unwrap();
    std::fs::rename(&tmp, &path).unwrap();
    assert!(handle.reload_if_changed().unwrap());
    assert_eq!(handle.load().lookup("1.128.0.1".parse().unwrap()).as_org.as_deref(), Some("Telstra Pty Ltd"));
    assert!(handle.load().lookup("4.0.0.1".parse().unwrap()).asn.is_none());
}
