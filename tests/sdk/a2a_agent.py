"""A real A2A agent for the tests, built on the official a2a-sdk (1.3): skills `echo` (answers
"echo: <text>"), `ask` (answers input-required with a question) and `slow` (takes 30 s).

Usage: a2a_agent.py PORT NAME VERSIONS   (VERSIONS: "1.0,0.3" or "0.3")
The card lists a JSON-RPC interface per version; 0.3 is served through the SDK's compatibility
adapter on the same endpoint.
"""

import asyncio
import sys

import uvicorn
from starlette.applications import Starlette
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandler
from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
from a2a.server.tasks import InMemoryTaskStore, TaskUpdater
from a2a.helpers import new_task_from_user_message
from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill, Part

PORT = int(sys.argv[1])
NAME = sys.argv[2]
VERSIONS = sys.argv[3].split(",")


class Executor(AgentExecutor):
    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        task = context.current_task
        if task is None:  # a Task must be the first event
            task = new_task_from_user_message(context.message)
            await event_queue.enqueue_event(task)
        updater = TaskUpdater(event_queue, task.id, task.context_id)
        await updater.start_work()
        text = context.get_user_input()
        if "slow" in text:
            await asyncio.sleep(30)
        if "ask" in text:
            await updater.requires_input(updater.new_agent_message([Part(text="Which city?")]))
            return
        await updater.add_artifact([Part(text=f"echo: {text}")], name="answer")
        await updater.complete()

    async def cancel(self, context, event_queue):
        await TaskUpdater(event_queue, context.task_id, context.context_id).cancel()


url = f"http://127.0.0.1:{PORT}/"
card = AgentCard(
    name=NAME,
    description="Echoes text",
    version="1.0.0",
    supported_interfaces=[
        AgentInterface(protocol_binding="JSONRPC", protocol_version=v, url=url) for v in VERSIONS
    ],
    capabilities=AgentCapabilities(streaming=True),
    default_input_modes=["text/plain"],
    default_output_modes=["text/plain"],
    skills=[
        AgentSkill(id="echo", name="Echo", description="Echo the input", tags=["echo"], examples=["hello"]),
        AgentSkill(id="ask", name="Ask", description="Asks a question back", tags=["ask"]),
        AgentSkill(id="slow", name="Slow", description="Takes its time", tags=["slow"]),
    ],
)
handler = DefaultRequestHandler(agent_executor=Executor(), task_store=InMemoryTaskStore(), agent_card=card)
app = Starlette(
    routes=[
        *create_agent_card_routes(card),
        *create_jsonrpc_routes(handler, rpc_url="/", enable_v0_3_compat="0.3" in VERSIONS),
    ]
)
uvicorn.run(app, host="127.0.0.1", port=PORT, log_level="warning")
