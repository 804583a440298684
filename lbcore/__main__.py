from lbcore.cli import main

main()
