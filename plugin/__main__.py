"""`python -m plugin` runs the plugin exactly as the frozen binary does."""

from plugin.main import main

main()
