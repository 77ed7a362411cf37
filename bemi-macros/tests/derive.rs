//! `#[derive(Audited)]`: what compiles, and the errors (with spans) of what does not.

#[test]
fn derive_audited() {
    let cases = trybuild::TestCases::new();
    cases.pass("tests/ui/pass/*.rs");
    cases.compile_fail("tests/ui/fail/*.rs");
}
