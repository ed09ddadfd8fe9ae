//! SmolLM2-135M's linear weights are llama.cpp Q4_1 grids (asymmetric, 16 levels per group of
//! 32, f16 `d` and `m`): asymmetric 4-bit RTN with groups of 32 must find those grids again, so
//! re-quantizing is lossless up to the f16 rounding of the zero point — an outside reference for
//! the grid fitting and the packed layout on a real model.

#[path = "../../compress-model/tests/common/mod.rs"]
mod common;

use compress_core::backend::BackendKind;
use compress_core::compressor::{weight_rel_error, Compressor, LayerStats, LayerView};
use compress_core::packed::{QuantScheme, Symmetry};
use compress_core::pipeline::{BlockWalk, BlockwiseModel};
use compress_quant::rtn::Rtn;

#[test]
fn asymmetric_rtn_g32_recovers_the_q4_1_grids() {
    let Some(path) = common::smollm2() else {
        return;
    };
    let m = compress_model::load(path, &BackendKind::Flex.device().unwrap()).unwrap();
    let model = &m.model;
    let rtn = Rtn::new(QuantScheme::new(4, Some(32), Symmetry::Asymmetric).unwrap());
    let sym = Rtn::new(QuantScheme::new(4, Some(32), Symmetry::Symmetric).unwrap());
    let (mut worst, mut sym_best) = (0f64, f64::INFINITY);
    for block in [0, 14, 29] {
        for stage in model.stages(block) {
            for id in stage.linears {
                let name = id.to_string();
                let name = name.as_str();
                let lin = model.expect_linear(id);
                let w: Vec<f32> = lin.dense_weight().into_data().try_to_vec::<f32>().unwrap();
                let view = LayerView {
                    path: name,
                    weight: &w,
                    out_features: lin.out_features(),
                    in_features: lin.in_features(),
                    mask: None,
                    packed: None,
                    original: None,
                };
                let e = weight_rel_error(
                    &w,
                    &rtn.compress(view, &LayerStats::default())
                        .unwrap()
                        .to_dense(),
                );
                let es = weight_rel_error(
                    &w,
                    &sym.compress(view, &LayerStats::default())
                        .unwrap()
                        .to_dense(),
                );
                worst = worst.max(e);
                sym_best = sym_best.min(es);
            }
        }
    }
    eprintln!("asymmetric g32: worst relative weight error {worst:.2e}; symmetric g32: best {sym_best:.2e}");
    // Only the zero point −m/d is rounded (to f16, relative 2^-11 of up to 15 codes): measured
    // 5.3e-4 of the weights' norm at worst; symmetric grids cannot represent Q4_1's (8.4e-2).
    assert!(worst < 1e-3, "{worst}");
    assert!(sym_best > 10.0 * worst);
}
