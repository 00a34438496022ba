use super::*;
use crate::admission::Admission;

/// Registers a session with a fresh place among connections.
fn register(hub: &Arc<Hub>, tenant: &TenantId, filter: TopicFilter) -> Registration {
    let ticket = Arc::new(Admission::default()).admit(tenant).expect("place");
    hub.register(
        ticket,
        tenant,
        FrameFormat::Raw,
        filter,
        Durable::After(None),
        None,
    )
}

fn delivery(tenant: &str, topic: Option<&str>, body: &str) -> Delivery {
    Delivery {
        tenant: TenantId::parse(tenant).expect("tenant"),
        audience: Audience::Sessions,
        topic: topic.map(|t| Topic::parse(t).expect("topic")),
        seq: 1,
        position: None,
        id: uuid::Uuid::nil(),
        channel: Arc::from("pgwebsocket"),
        body: JsonBody::parse(body).expect("json"),
    }
}

/// The text of the frames waiting in a (not yet attached) session's outbox.
fn received(reg: &Registration) -> Vec<String> {
    reg.outbox
        .take_pending()
        .iter()
        .map(|f| {
            let start = if f[1] == 126 { 4 } else { 2 };
            String::from_utf8(f[start..].to_vec()).expect("text")
        })
        .collect()
}

#[test]
fn delivers_only_to_the_tenant_and_shares_bytes() {
    let hub = Arc::new(Hub::new(8));
    let acme = TenantId::parse("acme").expect("tenant");
    let other = TenantId::parse("other").expect("tenant");
    let a1 = register(&hub, &acme, TopicFilter::All);
    let a2 = register(&hub, &acme, TopicFilter::All);
    let o = register(&hub, &other, TopicFilter::All);
    hub.publish(&[delivery("acme", None, r#"{"n":1}"#)]);
    let f1 = a1.outbox.take_pending();
    let f2 = a2.outbox.take_pending();
    assert_eq!(&f1[0][2..], br#"{"n":1}"#);
    assert_eq!(f1[0].as_ptr(), f2[0].as_ptr(), "one encoding, shared");
    assert!(received(&o).is_empty());
}

#[test]
fn topic_filters_select_topical_messages() {
    let hub = Arc::new(Hub::new(8));
    let acme = TenantId::parse("acme").expect("tenant");
    let only = TopicFilter::Only(Arc::new([Topic::parse("orders").expect("topic")].into()));
    let s = register(&hub, &acme, only);
    hub.publish(&[
        delivery("acme", Some("billing"), "1"),
        delivery("acme", Some("orders"), "2"),
        delivery("acme", None, "3"),
    ]);
    assert_eq!(received(&s), ["2", "3"]);
}

#[test]
fn a_batch_over_several_tenants_keeps_each_tenants_order() {
    let hub = Arc::new(Hub::new(64));
    let a = TenantId::parse("a").expect("tenant");
    let b = TenantId::parse("b").expect("tenant");
    let sa = register(&hub, &a, TopicFilter::All);
    let sb = register(&hub, &b, TopicFilter::All);
    hub.publish(&[
        delivery("a", None, "1"),
        delivery("b", None, "2"),
        delivery("a", None, "3"),
        delivery("a", None, "4"),
        delivery("b", None, "5"),
    ]);
    assert_eq!(received(&sa), ["1", "3", "4"]);
    assert_eq!(received(&sb), ["2", "5"]);
}

proptest::proptest! {
    /// Over any interleaving of connects, disconnects and message batches across tenants, every
    /// session receives exactly its tenant's messages published while it was connected, in order.
    #[test]
    fn sessions_receive_exactly_their_tenants_messages(
        ops in proptest::collection::vec((0u8..3, 0usize..4, 0usize..6), 1..200)
    ) {
        let tenants: Vec<TenantId> = ["t0", "t1", "t2", "t3"]
            .iter()
            .map(|t| TenantId::parse(t).expect("tenant"))
            .collect();
        let hub = Arc::new(Hub::new(1024));
        // (tenant index, registration, messages expected)
        let mut sessions: Vec<(usize, Registration, Vec<String>)> = Vec::new();
        let mut next = 0u64;
        for (op, tenant, which) in ops {
            match op {
                0 => {
                    let reg = register(&hub, &tenants[tenant], TopicFilter::All);
                    sessions.push((tenant, reg, Vec::new()));
                }
                1 if !sessions.is_empty() => {
                    let (_, reg, want) = sessions.remove(which % sessions.len());
                    proptest::prop_assert_eq!(received(&reg), want);
                }
                _ => {
                    // A batch of 1-3 messages, alternating between two tenants.
                    let mut batch = Vec::new();
                    for k in 0..=(which % 3) {
                        next += 1;
                        let t = (tenant + k % 2) % tenants.len();
                        batch.push(delivery(tenants[t].as_str(), None, &next.to_string()));
                        for (st, _, want) in sessions.iter_mut() {
                            if *st == t {
                                want.push(next.to_string());
                            }
                        }
                    }
                    hub.publish(&batch);
                }
            }
        }
        for (_, reg, want) in sessions {
            proptest::prop_assert_eq!(received(&reg), want);
        }
        proptest::prop_assert!(hub.shards[0].is_empty(), "no tenant entry outlives its sessions");
    }
}

#[test]
fn full_queue_unregisters_and_ends_the_session() {
    let hub = Arc::new(Hub::new(2));
    let acme = TenantId::parse("acme").expect("tenant");
    let slow = register(&hub, &acme, TopicFilter::All);
    let fast = register(&hub, &acme, TopicFilter::All);
    for _ in 0..3 {
        hub.publish(&[delivery("acme", None, "1")]);
        let _ = fast.outbox.take_pending();
    }
    assert_eq!(slow.outbox.ended(), Some(crate::outbox::Ended::TooSlow));
    assert_eq!(fast.outbox.ended(), None);
    assert_eq!(hub.subscribers(&acme), 1);
}
