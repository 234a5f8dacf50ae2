"""Grading: final-answer extraction, equivalence (math-verify with a time limit), overthinking
analysis and the failure taxonomy."""

from jaxthink.grading.extract import (Sections, Span, extract_final_answer, find_boxed,
                                      split_thinking)
from jaxthink.grading.grade import Grade, grade
from jaxthink.grading.overthinking import (Candidate, OverthinkingResult, analyze_response,
                                           find_candidates)
from jaxthink.grading.taxonomy import BUCKETS, ArithmeticClaim, failure_bucket, find_arithmetic_claims
from jaxthink.grading.verify import Match, answers_match, match_answers

__all__ = ["Sections", "Span", "extract_final_answer", "find_boxed", "split_thinking", "Grade",
           "grade", "Candidate", "OverthinkingResult", "analyze_response", "find_candidates",
           "BUCKETS", "ArithmeticClaim", "failure_bucket", "find_arithmetic_claims", "Match",
           "answers_match", "match_answers"]
