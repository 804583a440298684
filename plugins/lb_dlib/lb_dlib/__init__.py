"""lb-dlib: dlib's 68-point shape predictor as a Landmark Breaker extractor (``dlib68``), with a
query-estimated gradient so the gradient engine can attack it, and a score-based Square Attack."""

__all__: list[str] = []
