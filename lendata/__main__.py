from lendata.cli import app

app()
