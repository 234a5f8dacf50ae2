"""The decode engine: one compiled generation loop with the marker penalty and co-decoding."""

from jaxthink.decode.generate import DecodeResult, bucket_length, generate
from jaxthink.decode.mesh import MeshConfig, mesh_from_config
from jaxthink.decode.penalty import MarkerPenalty, marker_token_ids, marker_variants
from jaxthink.decode.sampling import Sampling
from jaxthink.decode.engine import Engine, EngineStats, Request
