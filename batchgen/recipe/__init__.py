"""What is asked: the job spec and its files, formats, variants, rendering, exact token counts, prices, the plan,
and compiling a stage into Batch API input files. Nothing here knows the ledger or the provider."""
