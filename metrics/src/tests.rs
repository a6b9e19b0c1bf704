use prometheus::{
    CounterVec, Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

use super::*;

fn render(registry: &Registry) -> String {
    let mut out = Vec::new();
    TextEncoder::new()
        .encode(&registry.gather(), &mut out)
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[test]
fn every_kind_of_family_exports_the_series_it_was_given() {
    let registry = Registry::new();
    let ints: Family<IntCounterVec, 2> =
        Family::new(Opts::new("ints_total", "h"), ["route", "result"]).unwrap();
    let floats: Family<CounterVec, 1> =
        Family::new(Opts::new("usd_total", "h"), ["route"]).unwrap();
    let gauge: Family<GaugeVec, 1> = Family::new(Opts::new("used", "h"), ["quota"]).unwrap();
    let int_gauge: Family<IntGaugeVec, 1> = Family::new(Opts::new("info", "h"), ["v"]).unwrap();
    let histogram: Family<HistogramVec, 1> = Family::new(
        HistogramOpts::new("seconds", "h").buckets(vec![1.0, 2.0]),
        ["route"],
    )
    .unwrap();
    registry.register(Box::new(ints.clone())).unwrap();
    registry.register(Box::new(floats.clone())).unwrap();
    registry.register(Box::new(gauge.clone())).unwrap();
    registry.register(Box::new(int_gauge.clone())).unwrap();
    registry.register(Box::new(histogram.clone())).unwrap();
    // Nothing is exported before a series is used: the probe in `new` is gone.
    assert_eq!(render(&registry), "");

    ints.with(["a", "hit"]).inc_by(2);
    floats.with(["a"]).inc_by(0.5);
    gauge.with(["q"]).set(1.5);
    int_gauge.with(["1.0"]).set(1);
    histogram.with(["a"]).observe(1.5);
    let text = render(&registry);
    for line in [
        r#"ints_total{result="hit",route="a"} 2"#,
        r#"usd_total{route="a"} 0.5"#,
        r#"used{quota="q"} 1.5"#,
        r#"info{v="1.0"} 1"#,
        r#"seconds_bucket{route="a",le="2"} 1"#,
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
}

#[test]
fn a_family_that_could_not_make_a_series_is_an_error_when_made() {
    // Buckets out of order are not checked by `HistogramVec::new`, only by the first
    // child: here it is `new` that says so, not the first request.
    let histogram: prometheus::Result<Family<HistogramVec, 1>> = Family::new(
        HistogramOpts::new("seconds", "h").buckets(vec![2.0, 1.0]),
        ["route"],
    );
    assert!(histogram.is_err());
    let bad_name: prometheus::Result<Family<IntCounterVec, 1>> =
        Family::new(Opts::new("ok_total", "h"), ["not a label"]);
    assert!(bad_name.is_err());
}

#[test]
fn prune_removes_only_series_with_a_gone_label() {
    let family: Family<IntCounterVec, 2> =
        Family::new(Opts::new("c_total", "h"), ["route", "consumer"]).unwrap();
    family.with(["kept", "alice"]).inc();
    family.with(["deleted", "alice"]).inc();
    family.with(["kept", "bob"]).inc();
    family.with(["", ""]).inc();
    family.prune(|name, value| {
        (name == "route" && value == "deleted") || (name == "consumer" && value == "bob")
    });
    let left: Vec<Vec<String>> = Collector::collect(&family)[0]
        .get_metric()
        .iter()
        .map(|m| {
            m.get_label()
                .iter()
                .map(|l| l.value().to_string())
                .collect()
        })
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.contains(&vec!["alice".to_string(), "kept".to_string()]));
    assert!(left.contains(&vec![String::new(), String::new()]));
    // A pruned series starts again at zero.
    family.with(["deleted", "alice"]).inc();
    assert_eq!(family.with(["deleted", "alice"]).get(), 1);

    family.reset();
    assert!(Collector::collect(&family)[0].get_metric().is_empty());
}
