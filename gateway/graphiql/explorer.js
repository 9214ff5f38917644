// Starts GraphiQL (shipped with wagate, see scripts/vendor-graphiql) against this
// gateway's POST /graphql. The API token comes from this tab's dashboard sign-in
// (same origin, sessionStorage), or from the Headers pane:
// {"Authorization": "Bearer wgt_..."}.
(function () {
  "use strict";

  var TOKEN_KEY = "wagate.token"; // the dashboard's key (gateway/static/app.js)
  var token = null;
  try {
    token = window.sessionStorage.getItem(TOKEN_KEY);
  } catch (err) {
    token = null; // storage disabled: the Headers pane still works
  }
  var headers = token ? JSON.stringify({ Authorization: "Bearer " + token }, null, 2) : "";
  var START = [
    "# The wagate GraphQL explorer. Run a query with Ctrl-Enter or the play button;",
    "# the Docs button on the left shows the whole schema.",
    "#",
    "# If the gateway asks for a token (UNAUTHENTICATED), sign in on the dashboard",
    "# (/) in this tab, or put it in the Headers pane below:",
    '#   {"Authorization": "Bearer wgt_..."}',
    "",
    "query Status {",
    "  whatsAppStatus {",
    "    connected",
    "    state",
    "    qrCodeRaw",
    "    qrExpiresAt",
    "  }",
    "}",
    "",
  ].join("\n");

  var fetcher = window.GraphiQL.createFetcher({
    url: new URL("/graphql", window.location.href).href,
  });
  var root = window.ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    window.React.createElement(window.GraphiQL, {
      fetcher: fetcher,
      defaultQuery: START,
      defaultHeaders: headers,
      defaultEditorToolsVisibility: headers ? "headers" : true,
      shouldPersistHeaders: false,
    })
  );
})();
