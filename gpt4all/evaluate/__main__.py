from gpt4all.evaluate.app import main

main()
