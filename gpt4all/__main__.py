from gpt4all.pipeline import main

main()
