//! Fuzz-lite: random bytes and random mutations of a real header never panic, and
//! metadata written by the test writer reads back identically.

#[path = "gguf_support/mod.rs"]
mod common;

use std::sync::OnceLock;

use common::{build_gguf, TensorSpec, Writer, STORIES};
use compress_model::gguf::{GgufArray, GgufFile, GgufValue};
use proptest::prelude::*;

/// Parses `bytes`; on success touches every accessor and dequantizes every tensor.
fn exercise(bytes: Vec<u8>) {
    let Ok(f) = GgufFile::from_bytes(bytes) else {
        return;
    };
    for (k, v) in f.metadata() {
        assert!(
            f.get(k).is_some_and(|x| std::ptr::eq(x, v)),
            "lookup of `{k}`"
        );
        let _ = (f.get_u32(k), f.get_f32(k), f.get_str(k), f.get_int_array(k));
    }
    for t in f.tensors() {
        assert_eq!(f.tensor_bytes(t).len() as u64, t.n_bytes());
        if let Ok(v) = f.dequantize_tensor(t) {
            assert_eq!(v.len() as u64, t.n_elements());
        }
    }
}

fn stories() -> Option<&'static [u8]> {
    static BYTES: OnceLock<Option<Vec<u8>>> = OnceLock::new();
    BYTES.get_or_init(|| std::fs::read(STORIES).ok()).as_deref()
}

/// End of the real file's header region we mutate (its data section start).
const STORIES_HEADER: usize = 14176;

fn nasty_u64() -> impl Strategy<Value = u64> {
    prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(u64::MAX - 1),
        Just(1 << 40),
        Just(1 << 63),
        Just(u64::from(u32::MAX)),
        0u64..100_000,
        any::<u64>(),
    ]
}

#[derive(Debug, Clone)]
enum Mutation {
    Byte(usize, u8),
    Word(usize, u64),
    Truncate(usize),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (0..STORIES_HEADER, any::<u8>()).prop_map(|(i, b)| Mutation::Byte(i, b)),
        3 => (0..STORIES_HEADER, nasty_u64()).prop_map(|(i, w)| Mutation::Word(i, w)),
        1 => (0..STORIES_HEADER + 4096).prop_map(Mutation::Truncate),
    ]
}

/// A small random metadata value (floats without NaN so equality is meaningful).
fn value() -> impl Strategy<Value = GgufValue> {
    let f32s = any::<f32>().prop_filter("no NaN", |x| !x.is_nan());
    let f64s = any::<f64>().prop_filter("no NaN", |x| !x.is_nan());
    let leaf_array = prop_oneof![
        prop::collection::vec(any::<u8>(), 0..8).prop_map(GgufArray::U8),
        prop::collection::vec(any::<i16>(), 0..8).prop_map(GgufArray::I16),
        prop::collection::vec(any::<u32>(), 0..8).prop_map(GgufArray::U32),
        prop::collection::vec(any::<i32>(), 0..8).prop_map(GgufArray::I32),
        prop::collection::vec(f32s.clone(), 0..8).prop_map(GgufArray::F32),
        prop::collection::vec(any::<bool>(), 0..8).prop_map(GgufArray::Bool),
        prop::collection::vec(".{0,6}", 0..8).prop_map(GgufArray::String),
        prop::collection::vec(any::<i64>(), 0..8).prop_map(GgufArray::I64),
    ];
    let array = leaf_array.prop_recursive(3, 16, 4, |inner| {
        prop::collection::vec(inner, 0..4).prop_map(GgufArray::Array)
    });
    prop_oneof![
        any::<u8>().prop_map(GgufValue::U8),
        any::<i8>().prop_map(GgufValue::I8),
        any::<u16>().prop_map(GgufValue::U16),
        any::<i16>().prop_map(GgufValue::I16),
        any::<u32>().prop_map(GgufValue::U32),
        any::<i32>().prop_map(GgufValue::I32),
        f32s.prop_map(GgufValue::F32),
        any::<bool>().prop_map(GgufValue::Bool),
        ".{0,12}".prop_map(GgufValue::String),
        any::<u64>().prop_map(GgufValue::U64),
        any::<i64>().prop_map(GgufValue::I64),
        f64s.prop_map(GgufValue::F64),
        array.prop_map(GgufValue::Array),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2048)) {
        exercise(bytes);
    }

    #[test]
    fn random_bytes_after_valid_preamble_never_panic(
        version in prop_oneof![Just(2u32), Just(3)],
        n_tensors in 0u64..4,
        n_kv in 0u64..4,
        rest in prop::collection::vec(any::<u8>(), 0..1024),
    ) {
        let mut w = Writer::new();
        w.header(version, n_tensors, n_kv).bytes(&rest);
        exercise(w.buf);
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1000))]

    #[test]
    fn mutated_real_header_never_panics(muts in prop::collection::vec(mutation(), 1..8)) {
        let Some(orig) = stories() else {
            common::model_or_skip(STORIES); // panics under CI=true, prints the skip otherwise
            return Ok(());
        };
        let mut b = orig.to_vec();
        for m in muts {
            match m {
                Mutation::Byte(i, v) => {
                    if let Some(x) = b.get_mut(i) {
                        *x = v;
                    }
                }
                Mutation::Word(i, w) => {
                    if let Some(s) = b.get_mut(i..i + 8) {
                        s.copy_from_slice(&w.to_le_bytes());
                    }
                }
                Mutation::Truncate(n) => b.truncate(n),
            }
        }
        exercise(b);
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn metadata_round_trips(
        entries in prop::collection::btree_map("[a-z._]{1,16}", value(), 0..6),
        n_floats in 0u64..20,
    ) {
        let kvs: Vec<(&str, GgufValue)> =
            entries.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        // Keep general.alignment valid if the generator happened to pick it.
        prop_assume!(!entries.contains_key("general.alignment"));
        let data: Vec<u8> = (0..n_floats).flat_map(|i| (i as f32).to_le_bytes()).collect();
        let t = TensorSpec { name: "t".into(), dims: vec![n_floats], type_id: 0, data };
        let f = GgufFile::from_bytes(build_gguf(&kvs, &[t])).unwrap();
        prop_assert_eq!(f.metadata().len(), kvs.len());
        for ((k, v), (k2, v2)) in kvs.iter().zip(f.metadata()) {
            prop_assert_eq!(k, k2);
            prop_assert_eq!(v, v2);
        }
        let vals = f.dequantize("t").unwrap();
        prop_assert!(vals.iter().enumerate().all(|(i, &x)| x == i as f32));
    }
}
