from povid_cli.cli import main

main()
