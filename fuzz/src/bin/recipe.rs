//! Fuzz target: recipe TOML (`compress::fuzz::recipe`). Run with `scripts/fuzz`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        compress::fuzz::recipe(data);
    });
}
