"""Post-training quantization of the decoder, executed by AQT (`aqtp`) in its convert -> serve flow.

    from jaxthink.quant import QuantSpec, quantize
    decoder, qparams, report = quantize(model.config, model.params, QuantSpec("w4a16", "gptq"),
                                        tokenizer=model.tokenizer)
    logits, _ = decoder.apply({"params": qparams}, tokens, positions, mask)

Schemes `w8a16`, `w4a16`, `w3a16` (weights only, per channel or group-wise), `w8a8`, `w4a4`
(plus dynamic per-token activations), methods `rtn`, `gptq`, `awq`, `smoothquant` (w8a8),
`hadamard` / `flatquant` (w4a4, w8a8); `kv_bits` (8/4) is carried for the decode engine's cache.
Served params hold int8/int4 values and float32 scales only (`aqt/qrhs/{value, scale}` per
linear), saved and restored with orbax (`save_quantized` / `load_quantized`).

Weight-only layers can instead carry a zero point per group (`symmetric: false`, the default
for GPTQ / AWQ at 3-4 bits): aqtp 0.9.0 has only symmetric numerics, so those layers are served
by `zero_point` from `zq/{value, scale, zero}`. Methods `hadamard` / `flatquant` (w4a4, w8a8)
transform each linear input before quantizing it (`flatquant`).
"""

from jaxthink.quant import flatquant, zero_point
from jaxthink.quant.aqt_linear import LinearQuant, QuantRules, convert_linear
from jaxthink.quant.calibrate import CalibrationData, calibration_data, read_texts
from jaxthink.quant.checkpoint import load_quantized, save_quantized
from jaxthink.quant.metrics import dequantize_frozen, frozen_layers, mean_token_kl, weight_bytes
from jaxthink.quant.pipeline import quantize
from jaxthink.quant.sharding import param_shardings, quant_param_spec, shard_params
from jaxthink.quant.spec import (METHODS, SCHEMES, CalibrationSpec, LayerRule, QuantConfigError,
                                 QuantSpec)
