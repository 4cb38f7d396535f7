from ssimlayer.report.build import main

main()
