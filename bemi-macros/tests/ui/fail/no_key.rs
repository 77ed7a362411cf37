#[derive(bemi::Audited)]
#[bemi(table = "todo")]
struct Todo {
    uid: i32,
}

fn main() {}
