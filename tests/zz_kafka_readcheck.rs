mod common;
use std::time::{Duration, Instant};
use common::kafka::{block_on, produce_one_async, Isolation, KafkaBroker};
use rdkafka::producer::Producer;

#[test]
fn big_read() {
    let b = KafkaBroker::start();
    b.create_topic("big", 2);
    let p = b.transactional_producer("big-tx");
    let mut committed = 0usize;
    let mut all = 0usize;
    for txn in 0..100 {
        p.begin_transaction().expect("begin");
        let futs: Vec<_> = (0..500).map(|i| { let k = format!("k{txn}-{i}"); produce_one_async(&p, "big", Some(k.as_bytes()), Some(b"v"), &[]) }).collect();
        for f in futs { block_on(f); }
        all += 500;
        if txn % 7 == 3 { p.abort_transaction(Duration::from_secs(30)).expect("abort"); } else { p.commit_transaction(Duration::from_secs(30)).expect("commit"); committed += 500; }
    }
    let t = Instant::now();
    let got = b.read_all_committed("big", Duration::from_secs(60));
    eprintln!("read {} in {:?}", got.len(), t.elapsed());
    assert_eq!(got.len(), committed);
    assert!(got.iter().all(|r| { let k = r.key_str().expect("k"); let txn: usize = k[1..].split('-').next().expect("x").parse().expect("n"); txn % 7 != 3 }));
    let raw = b.read_to_end("big", Isolation::ReadUncommitted, Duration::from_secs(60));
    assert_eq!(raw.len(), all);
}
