mod common;
use std::time::{Duration, Instant};
use common::kafka::KafkaBroker;
use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::client::ClientContext;
use rdkafka::config::RDKafkaLogLevel;
struct Dbg(Instant);
impl ClientContext for Dbg { fn log(&self, _l: RDKafkaLogLevel, fac: &str, m: &str) { eprintln!("{:>8.3?} {fac} {m}", self.0.elapsed()); } }
impl ConsumerContext for Dbg {}

fn first(c: &BaseConsumer<Dbg>) { loop { if let Some(r) = c.poll(Duration::from_millis(100)) { r.expect("msg"); return; } } }

#[test]
fn probe() {
    let b = KafkaBroker::start();
    b.create_topic("t", 1);
    let t = Instant::now(); b.produce("t", &[("a","1"),("b","2"),("c","3"),("d","4")]); eprintln!("produce4 {:?}", t.elapsed());
    for g in ["g1", "g2"] {
        let t = Instant::now();
        let c: BaseConsumer<Dbg> = b.consumer_config(g).set("debug", "cgrp,protocol").set_log_level(RDKafkaLogLevel::Debug).create_with_context(Dbg(Instant::now())).expect("c");
        c.fetch_metadata(None, Duration::from_secs(5)).expect("md"); c.subscribe(&["t"]).expect("s");
        first(&c);
        eprintln!("group {g} first msg {:?}", t.elapsed());
    }
    let t = Instant::now(); let _p = b.transactional_producer("x1"); eprintln!("txn1 {:?}", t.elapsed());
    let t = Instant::now(); let _p = b.transactional_producer("x2"); eprintln!("txn2 {:?}", t.elapsed());
}
