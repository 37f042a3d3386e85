"""One module per published method. Plain functions over rows and an Engine; no Prefect in here."""
