#[derive(bemi::Audited)]
struct Todo {
    id: i32,
}

fn main() {}
