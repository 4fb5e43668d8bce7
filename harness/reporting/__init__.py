"""Everything reported from run records: analysis, the quiz, tables, plots, MLflow and the console."""
