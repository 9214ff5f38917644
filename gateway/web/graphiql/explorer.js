// Starts GraphiQL (shipped with wagate, see scripts/vendor-graphiql) against this
// gateway's POST /graphql. The API token comes from this tab's dashboard sign-in
// (same origin, sessionStorage; never shown or stored by the explorer), or from the
// Headers pane: {"Authorization": "Bearer wgt_..."}.
(function () {
  "use strict";

  var TOKEN_KEY = "wagate.token"; // the dashboard's key (gateway/web/static/app.js)
  // GraphiQL's dialogs add a <style> element; with the page's nonce on it, the
  // Content-Security-Policy lets it apply (the bundle reads __webpack_nonce__).
  window.__webpack_nonce__ = document.currentScript ? document.currentScript.nonce : "";
  var token = null;
  try {
    token = window.sessionStorage.getItem(TOKEN_KEY);
  } catch (err) {
    token = null; // storage disabled: the Headers pane still works
  }
  var START = [
    "# The wagate GraphQL explorer.",
    "# Run: Ctrl-Enter or the play button.",
    "# The schema: the Docs button (left).",
    "#",
    "# Asked for a token (UNAUTHENTICATED)?",
    "# Sign in on the dashboard (/) in this",
    "# tab, or put it in the Headers pane:",
    '# {"Authorization": "Bearer wgt_..."}',
    "# then re-fetch the schema (the arrows,",
    "# bottom left).",
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

  // Every request carries the dashboard's token (the schema query too, which GraphiQL
  // sends before the Headers pane is read); headers typed in the pane override it.
  var fetcher = window.GraphiQL.createFetcher({
    url: new URL("/graphql", window.location.href).href,
    headers: token ? { Authorization: "Bearer " + token } : {},
  });
  var root = window.ReactDOM.createRoot(document.getElementById("graphiql"));
  root.render(
    window.React.createElement(window.GraphiQL, {
      fetcher: fetcher,
      defaultQuery: START,
      defaultEditorToolsVisibility: token ? false : "headers",
      shouldPersistHeaders: false,
    })
  );
})();
