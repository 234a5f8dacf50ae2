"""Token-level statistics and the comparison report."""

from jaxthink.analysis.report import (VariantSummary, hexbin_points, summarize_variant,
                                      write_report)
from jaxthink.analysis.stats import (TokenBuffers, TokenStats, mean_kl_by_token, pearson, spearman,
                                     token_stats)

__all__ = ["VariantSummary", "hexbin_points", "summarize_variant", "write_report", "TokenBuffers",
           "TokenStats", "mean_kl_by_token", "pearson", "spearman", "token_stats"]
