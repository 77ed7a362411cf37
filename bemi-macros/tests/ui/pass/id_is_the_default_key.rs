#[derive(bemi::Audited)]
#[bemi(table = "todo")]
struct Todo {
    id: uuid::Uuid,
    r#type: String,
}

fn main() {
    use bemi::Audited;
    assert_eq!(Todo::PRIMARY_KEY, ["id"]);
    assert_eq!(Todo::SCHEMA, "public");
    let todo = Todo { id: uuid::Uuid::nil(), r#type: "chore".into() };
    let key: uuid::Uuid = todo.key();
    assert!(key.is_nil());
    let row = serde_json::json!({"id": uuid::Uuid::nil(), "type": "chore"});
    assert_eq!(Todo::from_row(&serde_json::from_value(row).unwrap()).unwrap().r#type, "chore");
}
