from unclip_cli.cli import main

main()
