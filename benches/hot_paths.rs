//! Micro-benchmarks of the pure functions every request runs: parameter parsing, the
//! keyed code hash, and target normalisation. `cargo bench --bench hot_paths`.
//! The load benchmark of the whole service is `bench/run` (see BENCHMARKS.md).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use otpd::domain::Channel;
use otpd::domain::code::Password;
use otpd::domain::phone_policy::PhonePolicy;
use otpd::domain::secret::Secret;
use otpd::domain::target::{Phone, Target};
use otpd::http::params::Params;

fn parameters(c: &mut Criterion) {
    let json = br#"{"phone":"+7 (701) 123-45-67","password":"123456","lifetime":300}"#;
    c.bench_function("params: JSON body", |b| {
        b.iter(|| Params::parse(None, false, black_box(json)))
    });
    let form = b"phone=%2B77011234567&password=123456&lifetime=300";
    c.bench_function("params: form body", |b| {
        b.iter(|| Params::parse(None, true, black_box(form)))
    });
    c.bench_function("params: query string", |b| {
        b.iter(|| {
            Params::parse(
                Some(black_box("phone=77011234567&password=123456")),
                false,
                b"",
            )
        })
    });
}

fn code_hash(c: &mut Criterion) {
    let secret = match Secret::new(b"micro-benchmark-secret-0123456789abcdef".to_vec()) {
        Ok(secret) => secret,
        Err(e) => panic!("the benchmark secret is refused: {e}"),
    };
    let password = match Password::parse("123456") {
        Ok(password) => password,
        Err(e) => panic!("the benchmark code is refused: {e:?}"),
    };
    c.bench_function("HMAC code hash", |b| {
        b.iter(|| secret.code_hash(Channel::Sms, black_box("77011234567"), &password))
    });
}

fn targets(c: &mut Criterion) {
    c.bench_function("target: phone", |b| {
        b.iter(|| Target::parse(Channel::Sms, black_box("+7 (701) 123-45-67")).map(|t| t.key()))
    });
    c.bench_function("target: e-mail", |b| {
        b.iter(|| {
            Target::parse(Channel::Email, black_box("Someone.Else@Example.COM")).map(|t| t.key())
        })
    });
}

fn phone_policy(c: &mut Criterion) {
    let policy = PhonePolicy::default();
    let phone = match Phone::parse("77011234567") {
        Ok(phone) => phone,
        Err(e) => panic!("the benchmark phone is refused: {e}"),
    };
    // The metadata loads on first use; measure the steady state.
    let _ = policy.admit(Channel::Sms, &phone);
    c.bench_function("phone policy (libphonenumber)", |b| {
        b.iter(|| policy.admit(Channel::Sms, black_box(&phone)))
    });
}

criterion_group!(hot_paths, parameters, code_hash, targets, phone_policy);
criterion_main!(hot_paths);
