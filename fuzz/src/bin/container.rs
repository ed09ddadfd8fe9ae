//! Fuzz target: `compress_model::fuzz::container` (see that function). Run with `scripts/fuzz`.
fn main() {
    afl::fuzz!(|data: &[u8]| {
        compress_model::fuzz::container(data);
    });
}
