//! Edge policies' request-path costs: request hygiene (raw head scan, head checks, path
//! normalisation) and transformations (header templates, a 4 KiB JSON body set + remove).
//! Goal (issue "Edge policies"): the body transformation well under 20 µs.

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use gatehouse::config::transform::{pointer, template, BodyTransform, BodyValue};
use gatehouse::config::{EncodedSlash, Limits};
use gatehouse::hygiene::request_line::HeadScan;
use gatehouse::policy::json_body::{apply, values};
use gatehouse::policy::json_doc::Node;
use gatehouse::policy::template::{render, Names};
use gatehouse::policy::RequestState;
use pingora::http::RequestHeader;

const HEAD: &[u8] = b"GET /api/v1/users/7?expand=orders&limit=20 HTTP/1.1\r\nHost: api.example.com\r\nUser-Agent: Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36\r\nAccept: application/json\r\nAccept-Encoding: gzip, deflate, br\r\nAuthorization: Bearer eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjMifQ.sig\r\nX-Request-Id: 4bf92f3577b34da6a3ce929d0e0e4736\r\n\r\n";

fn hygiene(c: &mut Criterion) {
    let mut g = c.benchmark_group("hygiene");
    g.bench_function("scan_request_head", |b| {
        b.iter(|| {
            let mut scan = HeadScan::new(8192);
            scan.feed(black_box(HEAD));
            scan.verdict()
        })
    });
    let mut req = RequestHeader::build("GET", b"/api/v1/users/7?expand=orders", None).unwrap();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench"),
        ("accept", "application/json"),
        ("authorization", "Bearer x"),
    ] {
        req.insert_header(k, v).unwrap();
    }
    let limits = Limits::default();
    g.bench_function("check_head", |b| {
        b.iter(|| gatehouse::hygiene::check(black_box(&req), HEAD.len(), &limits))
    });
    g.bench_function("normalize_clean_path", |b| {
        b.iter(|| {
            gatehouse::hygiene::path::normalize(
                black_box("/api/v1/users/7/orders"),
                true,
                EncodedSlash::Reject,
            )
        })
    });
    g.bench_function("normalize_dotted_encoded_path", |b| {
        b.iter(|| {
            gatehouse::hygiene::path::normalize(
                black_box("/api/v1//public/%2e%2e/users/./%37/orders"),
                true,
                EncodedSlash::Reject,
            )
        })
    });
    g.finish();
}

fn transforms(c: &mut Criterion) {
    let req = RequestHeader::build("POST", b"/api/users?tenant=t1", None).unwrap();
    let state = RequestState::default();
    let names = Names {
        route: "users".into(),
        upstream: "users".into(),
        tiers: vec![],
    };
    let tpl = template("gw=${route} path=${path} tenant=${query.tenant} id=${request_id}").unwrap();
    let mut out = Vec::new();
    c.bench_function("transform_header_template", |b| {
        b.iter(|| {
            render(black_box(&tpl), &req, &state, &names, &mut out);
            out.len()
        })
    });
    let rules = BodyTransform {
        set: vec![
            (
                pointer("/meta/source").unwrap(),
                BodyValue::Text(template("gateway").unwrap()),
            ),
            (
                pointer("/meta/route").unwrap(),
                BodyValue::Text(template("${route}").unwrap()),
            ),
        ],
        remove: vec![pointer("/internal").unwrap(), pointer("/debug").unwrap()],
        rename: vec![],
        max_size: 1 << 20,
    };
    // A 4 KiB document: 64 records and the members to remove.
    let mut doc = String::from("{\"internal\":{\"a\":1},\"debug\":true,\"items\":[");
    for i in 0..64 {
        if i > 0 {
            doc.push(',');
        }
        doc.push_str(&format!(
            "{{\"id\":{i},\"name\":\"item number {i}\",\"price\":{i}.5,\"tags\":[\"a\",\"b\"]}}"
        ));
    }
    doc.push_str("]}");
    assert!(doc.len() > 3500 && doc.len() < 4500, "{}", doc.len());
    c.bench_function("transform_json_body_4kib_set_remove", |b| {
        b.iter(|| {
            let mut v = Node::parse(black_box(doc.as_bytes())).unwrap();
            let vals = values(&rules, &req, &state, &names);
            apply(&rules, &mut v, &vals);
            let mut out = Vec::with_capacity(doc.len() + 64);
            v.write(&mut out);
            out.len()
        })
    });
}

criterion_group!(benches, hygiene, transforms);
criterion_main!(benches);
