from parity.cli.main import main

main()
