from walletctl.cli.entry import main

main()
