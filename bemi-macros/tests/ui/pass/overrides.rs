use bemi::{Audited, AuditKey, QualifiedName};

#[derive(Debug, PartialEq, Audited)]
#[bemi(table = "Order Lines", schema = "sales", key(order_id, line), changes_table = "audit.changes")]
struct OrderLine {
    order_id: i64,
    #[bemi(column = "line no")]
    line: i16,
    #[bemi(noise)]
    product: String,
    #[bemi(ignore)]
    cached_total: f64,
    #[bemi(redact)]
    note: Option<String>,
    #[bemi(personal)]
    buyer_email: String,
}

fn main() {
    assert_eq!(OrderLine::TABLE, "Order Lines");
    assert_eq!(OrderLine::SCHEMA, "sales");
    assert_eq!(OrderLine::PRIMARY_KEY, ["order_id", "line no"]);
    assert_eq!(OrderLine::IGNORED, ["cached_total"]);
    assert_eq!(OrderLine::REDACTED, ["note"]);
    assert_eq!(OrderLine::NOISE, ["product"]);
    assert_eq!(OrderLine::PERSONAL, ["buyer_email"]);
    assert_eq!(
        OrderLine::audit_log().changes_table(),
        &QualifiedName::new("audit", "changes").unwrap()
    );
    let row = serde_json::json!({
        "order_id": 7, "line no": 2, "product": "tea", "cached_total": 9.5, "note": "[REDACTED]",
        "buyer_email": "a@example.com"
    });
    let line = OrderLine::from_row(&serde_json::from_value(row).unwrap()).unwrap();
    assert_eq!(
        line,
        OrderLine {
            order_id: 7, line: 2, product: "tea".into(), cached_total: 0.0, note: None,
            buyer_email: "a@example.com".into(),
        }
    );
    // An erased personal value reads as the field's default.
    let erased = serde_json::json!({
        "order_id": 7, "line no": 2, "product": "tea", "buyer_email": {"bemi_erased": "00ff"}
    });
    let line = OrderLine::from_row(&serde_json::from_value(erased).unwrap()).unwrap();
    assert_eq!(line.buyer_email, "");
    assert_eq!(line.key().to_stored_key(), r#"["7","2"]"#);
    let wrong = serde_json::json!({"order_id": "seven", "line no": 2, "product": "tea"});
    let error = OrderLine::from_row(&serde_json::from_value(wrong).unwrap()).unwrap_err();
    assert!(error.to_string().contains("column \"order_id\" of Order Lines"), "{error}");
}
